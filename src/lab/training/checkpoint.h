// The engine's checkpoint file: model, optimiser, progress and the task's extra state, written
// atomically and read all-or-nothing.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <string>

namespace quest::training {

class Task;

// The format this build writes. 1: checkpoints written before the format was recorded (read as
// they are, LibTorch 1.13's included); a newer format than this is refused by name.
constexpr int64_t kCheckpointFormat = 2;

struct CheckpointProgress {
  int64_t epoch = 0, step = 0;  // the next epoch to run; optimiser steps done
  double train_seconds = NAN;   // NaN: not recorded (format 1 before quest saved it)
};

// A temp file, then a rename (atomic on POSIX). A failed write (full disk) throws
// std::runtime_error and leaves the previous checkpoint as it was.
void write_checkpoint(const std::string& path, Task& task, torch::optim::Optimizer& optimizer,
                      const CheckpointProgress& progress);

// Reads a checkpoint file's bytes (`name` names it in errors) into the task's model and into
// `optimizer`, which should be fresh: every tensor is read and checked before the first is copied
// into the model, so a corrupt, truncated, foreign or too-new checkpoint throws
// std::runtime_error naming the file and leaves the model as it was.
CheckpointProgress read_checkpoint(const std::string& bytes, const std::string& name, Task& task,
                                   torch::optim::Optimizer& optimizer);

}  // namespace quest::training
