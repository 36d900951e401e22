// What `quest train` and `quest lm train` print when their run diverged.
#pragma once

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "commands.h"
#include "quest/core/diagnostics.h"
#include "quest/lab/runs/run_dir.h"

namespace quest::cli {

// The divergence, each layer's attention diagnostics at the stop, and whether the last good
// checkpoint survives; on stderr. Returns the exit code of a diverged run (kExitDiverged).
inline int report_divergence(const runs::RunOutcome& outcome,
                             const std::vector<std::optional<HeadDiagnostics>>& diagnostics,
                             bool checkpoint_kept, const std::string& run_dir) {
  std::fprintf(stderr, "error: training diverged: %s\n", outcome.message.c_str());
  for (size_t layer = 0; layer < diagnostics.size(); ++layer)
    if (const auto& d = diagnostics[layer])
      std::fprintf(stderr, "layer %zu attention:\n%s", layer, format_diagnostics(*d).c_str());
  if (checkpoint_kept)
    std::fprintf(stderr, "the last good checkpoint is kept: %s\n", runs::RunDir(run_dir).checkpoint().c_str());
  else
    std::fprintf(stderr, "no checkpoint yet: it diverged within its first epoch\n");
  return kExitDiverged;
}

}  // namespace quest::cli
