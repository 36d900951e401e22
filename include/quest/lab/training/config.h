// Task configs: the run settings every task carries (declared once), JSON files over a task's
// defaults checked key by key, and the config of the run a checkpoint belongs to.
#pragma once

#include <cstdint>
#include <c10/core/ScalarType.h>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "quest/core/kind.h"
#include "quest/lab/training/monitor.h"
#include "quest/torch/attention.h"

namespace quest::training {

// What every task's config holds for the engine and its batches (engine_config() in engine.h
// makes the EngineConfig): the optimiser, the warmup + cosine schedule, clipping, the seed,
// logging, the logit monitor and the run directory. A task config inherits it and sets its own
// defaults in its constructor; JSON keys are the field names, at the top level of the config.
struct RunSettings {
  int64_t epochs = 1, batch_size = 1;
  double lr = 1e-3, min_lr = 1e-5, weight_decay = 0, warmup_epochs = 0;
  double clip_grad_norm = 1.0;  // <= 0: off
  // Wortsman et al.'s z-loss: coefficient of mean (log Z)^2 of the output logits (0: off).
  double z_loss = 0;
  // QK-clip (Kimi K2's MuonClip) threshold tau on each head's max logit (0: off): EngineConfig.
  double qk_clip = 0;
  // Mixed precision of the training forward: "off" (float32) or "bf16" (torch's CPU autocast to
  // bfloat16: matmuls and linears in bfloat16, the loss in float32, float32 master weights and
  // optimiser; attention
  // takes bfloat16 q, k, v and computes in float32 inside). Validation and test run in float32.
  std::string autocast = "off";
  uint64_t seed = 0;
  int64_t log_every = 50;  // steps between metric lines (and diagnostics)
  LogitMonitorOptions logit_monitor;
  std::string run_dir;     // files: quest/lab/runs/run_dir.h
};
// The settings as top-level keys (a task's to_json adds its own).
nlohmann::json to_json(const RunSettings& settings);
// Reads the settings' keys of `merged` (a config after merged_config, so every key is there).
void read_run_settings(const nlohmann::json& merged, RunSettings& settings);
// The dtype an "autocast" setting names: nullopt for "off", bfloat16 for "bf16"; any other name
// is an error naming it.
std::optional<c10::ScalarType> autocast_dtype(const std::string& name);

// A task's config file over its defaults: keys absent from `j` keep their defaults, so a file can
// hold only what it changes; an unknown key (one level of nested objects, e.g. "model") is an
// error naming it — a typo would otherwise be silently ignored — and so is a value whose type
// differs from the default's.
nlohmann::json merged_config(const nlohmann::json& defaults, const nlohmann::json& j);

// Task `task`'s config file `j` over its `defaults` (merged_config), its run settings read into
// `settings`. A "task" key naming another task is refused first: that config would otherwise fail
// on its first unknown key, which names the wrong problem.
nlohmann::json read_task_config(const std::string& task, const nlohmann::json& defaults,
                                const nlohmann::json& j, RunSettings& settings);

// A model section's "attention" and "backend", parsed; an unknown name is an error naming it.
struct AttentionChoice {
  Kind kind;
  Backend backend;
};
AttentionChoice attention_choice(const nlohmann::json& model);

// The config.json of the run a checkpoint belongs to (its directory's), for re-creating the task
// before loading the checkpoint. A missing checkpoint or config raises an error naming it.
nlohmann::json run_config_of(const std::string& checkpoint);

}  // namespace quest::training
