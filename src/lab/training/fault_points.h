// Named points where the tests make a run fail as a real fault would: a kill while a checkpoint
// is written, a rank that dies, hangs or throws. Each point is off unless its QUEST_TEST_*
// variable is set (read once); a malformed value is an error naming it.
#pragma once

#include <cstdint>
#include <string>

namespace quest::training {

// Where the run is when it passes a fault point (the fields that point reads).
struct FaultSite {
  int rank = 0;
  int64_t epoch = -1, step = -1;
  std::string file;
};

enum class FaultPoint {
  checkpoint_written,  // after a checkpoint's temp file is written, before the rename
  step_started,        // a data-parallel rank at the start of a step
};

// What each point does:
//   checkpoint_written (file, epoch): QUEST_TEST_CRASH_CHECKPOINT=<after-write|mid-write>:<epoch>
//     kills the process while it writes the checkpoint that records <epoch> epochs, with the temp
//     file whole but not yet renamed, or cut in half — as a kill -9 or a power cut would.
//   step_started (rank, step): QUEST_TEST_RANK_FAULT=<kill|hang|throw>:<rank>:<step> makes that
//     rank die by SIGKILL, stop answering, or fail with an error when it reaches that step.
void fault_point(FaultPoint point, const FaultSite& site);

}  // namespace quest::training
