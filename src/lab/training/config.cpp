#include "quest/lab/training/config.h"

#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "quest/lab/runs/run_dir.h"

namespace quest::training {

// The type a config value must have: that of its default (an integer where the default is one).
static void check_type(const std::string& key, const nlohmann::json& value, const nlohmann::json& like) {
  const char* expected = like.is_boolean()           ? "true or false"
                         : like.is_number_unsigned() ? "a non-negative integer"
                         : like.is_number_integer()  ? "an integer"
                         : like.is_number()         ? "a number"
                         : like.is_string()         ? "a string"
                                                    : nullptr;
  const bool ok = like.is_boolean()          ? value.is_boolean()
                  : like.is_number_integer() ? value.is_number_integer() && (!like.is_number_unsigned() || value >= 0)
                  : like.is_number()         ? value.is_number()
                  : like.is_string()         ? value.is_string()
                                             : true;
  TORCH_CHECK(ok, "quest::training: config key '", key, "' must be ", expected, ", got ", value.dump());
}

nlohmann::json to_json(const RunSettings& s) {
  return {{"epochs", s.epochs},
          {"batch_size", s.batch_size},
          {"lr", s.lr},
          {"min_lr", s.min_lr},
          {"weight_decay", s.weight_decay},
          {"warmup_epochs", s.warmup_epochs},
          {"clip_grad_norm", s.clip_grad_norm},
          {"z_loss", s.z_loss},
          {"qk_clip", s.qk_clip},
          {"autocast", s.autocast},
          {"seed", s.seed},
          {"log_every", s.log_every},
          {"logit_monitor", to_json(s.logit_monitor)},
          {"run_dir", s.run_dir}};
}

void read_run_settings(const nlohmann::json& merged, RunSettings& s) {
  s.epochs = merged.at("epochs");
  s.batch_size = merged.at("batch_size");
  s.lr = merged.at("lr");
  s.min_lr = merged.at("min_lr");
  s.weight_decay = merged.at("weight_decay");
  s.warmup_epochs = merged.at("warmup_epochs");
  s.clip_grad_norm = merged.at("clip_grad_norm");
  s.z_loss = merged.at("z_loss");
  s.qk_clip = merged.at("qk_clip");
  TORCH_CHECK(s.z_loss >= 0 && std::isfinite(s.z_loss), "quest::training: config key 'z_loss' must be a finite number >= 0 (0: off), got ", s.z_loss);
  TORCH_CHECK(s.qk_clip >= 0 && std::isfinite(s.qk_clip), "quest::training: config key 'qk_clip' must be a finite number >= 0 (0: off), got ", s.qk_clip);
  s.autocast = merged.at("autocast");
  autocast_dtype(s.autocast);  // checks the name
  s.seed = merged.at("seed");
  s.log_every = merged.at("log_every");
  s.logit_monitor = logit_monitor_from_json(merged.at("logit_monitor"));
  s.run_dir = merged.at("run_dir");
}

std::optional<c10::ScalarType> autocast_dtype(const std::string& name) {
  if (name == "off") return std::nullopt;
  if (name == "bf16") return c10::ScalarType::BFloat16;
  TORCH_CHECK(false, "quest::training: config key 'autocast' must be \"off\" or \"bf16\", got \"", name, "\"");
}

nlohmann::json merged_config(const nlohmann::json& defaults, const nlohmann::json& j) {
  TORCH_CHECK(j.is_object(), "quest::training: a config must be a JSON object");
  for (const auto& [key, value] : j.items()) {
    TORCH_CHECK(defaults.contains(key), "quest::training: unknown config key '", key, "'");
    if (defaults[key].is_object()) {
      TORCH_CHECK(value.is_object(), "quest::training: '", key, "' must be a JSON object");
      for (const auto& [sub, subvalue] : value.items()) {
        TORCH_CHECK(defaults[key].contains(sub), "quest::training: unknown config key '", key, ".",
                    sub, "'");
        check_type(key + "." + sub, subvalue, defaults[key][sub]);
      }
    } else {
      check_type(key, value, defaults[key]);
    }
  }
  nlohmann::json merged = defaults;
  merged.merge_patch(j);
  return merged;
}

nlohmann::json read_task_config(const std::string& task, const nlohmann::json& defaults,
                                const nlohmann::json& j, RunSettings& settings) {
  TORCH_CHECK(!j.is_object() || !j.contains("task") || j["task"] == task,
              "quest::training: this config is for task ", j.is_object() && j.contains("task") ? j["task"].dump() : "",
              ", not \"", task, "\"");
  nlohmann::json merged = merged_config(defaults, j);
  read_run_settings(merged, settings);
  return merged;
}

AttentionChoice attention_choice(const nlohmann::json& model) {
  const std::string kind = model.at("attention"), backend = model.at("backend");
  const auto k = parse_kind(kind);
  TORCH_CHECK(k, "quest::training: unknown attention kind '", kind, "'");
  const auto b = parse_backend(backend);
  TORCH_CHECK(b, "quest::training: unknown backend '", backend, "'");
  return {*k, *b};
}

nlohmann::json run_config_of(const std::string& checkpoint) {
  TORCH_CHECK(std::filesystem::exists(checkpoint), "quest::training: checkpoint '", checkpoint,
              "' does not exist");
  try {
    return runs::RunDir(std::filesystem::path(checkpoint).parent_path()).read_config();
  } catch (const std::runtime_error& e) {
    TORCH_CHECK(false, "quest::training: checkpoint '", checkpoint, "': ", e.what());
  }
}

}  // namespace quest::training
