// Task configs as JSON: a file over its defaults, checked key by key, and the config of the run a
// checkpoint belongs to.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace quest::training {

// A task's config file over its defaults: keys absent from `j` keep their defaults, so a file can
// hold only what it changes; an unknown key (one level of nested objects, e.g. "model") is an
// error naming it — a typo would otherwise be silently ignored — and so is a value whose type
// differs from the default's.
nlohmann::json merged_config(const nlohmann::json& defaults, const nlohmann::json& j);

// The config.json of the run a checkpoint belongs to (its directory's), for re-creating the task
// before loading the checkpoint. A missing checkpoint or config raises an error naming it.
nlohmann::json run_config_of(const std::string& checkpoint);

}  // namespace quest::training
