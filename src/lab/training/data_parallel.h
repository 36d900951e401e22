// The engine's data-parallel reductions: the global step from the ranks' shards, and attention
// diagnostics over every rank.
#pragma once

#include <optional>
#include <vector>

#include "quest/core/diagnostics.h"
#include "quest/lab/distributed/process_group.h"
#include "quest/lab/training/engine.h"

namespace quest::training {

// Backward of this rank's shard, scaled so that gradients summed over the ranks and divided by the
// global batch are the one-process gradient; then the all-reduces. `out` becomes the global
// step's samples, correct and log Z; returns the global loss (loss_value is this shard's).
double all_reduce_step(distributed::ProcessGroup& group, torch::nn::Module& model, StepOutput& out,
                       double loss_value, const DataParallel& parallel);

// Diagnostics over every rank's shard: max of maxima, mean of means (layers alike on every rank).
void all_reduce_diagnostics(std::vector<std::optional<HeadDiagnostics>>& layers,
                            distributed::ProcessGroup& group);

}  // namespace quest::training
