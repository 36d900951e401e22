#include "quest/lab/tasks/task_kind.h"

#include <c10/util/Exception.h>

#include <map>
#include <mutex>

#include "builtin.h"

namespace quest::tasks {

namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, std::shared_ptr<const TaskKind>> kinds;
  void add(std::shared_ptr<const TaskKind> kind) {
    TORCH_CHECK(kind && !kind->name().empty(), "quest: a task kind needs a name");
    std::lock_guard<std::mutex> lock(mutex);
    TORCH_CHECK(!kinds.count(kind->name()), "quest: task kind '", kind->name(), "' is registered twice");
    kinds[kind->name()] = std::move(kind);
  }
};

// Built here, not by static initialisers in their files: a static library drops object files
// nothing refers to, and their registration with them.
Registry& registry() {
  static Registry* r = [] {
    auto* r = new Registry;
    r->add(vit_task_kind());
    r->add(lm_task_kind());
    r->add(retrieval_task_kind());
    return r;
  }();
  return *r;
}

}  // namespace

void register_task_kind(std::shared_ptr<const TaskKind> kind) { registry().add(std::move(kind)); }

std::vector<std::string> task_kind_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> names;
  for (const auto& [name, kind] : r.kinds) names.push_back(name);
  return names;
}

const TaskKind& task_kind(const std::string& name) {
  Registry& r = registry();
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    const auto it = r.kinds.find(name);
    if (it != r.kinds.end()) return *it->second;
  }
  std::string known;
  for (const auto& n : task_kind_names()) known += (known.empty() ? "" : ", ") + n;
  TORCH_CHECK(false, "quest: unknown task '", name, "' (", known, ")");
}

std::string task_name_of(const nlohmann::json& config) {
  TORCH_CHECK(config.is_object(), "quest: a config must be a JSON object");
  if (config.contains("task")) {
    TORCH_CHECK(config["task"].is_string(), "quest: config key 'task' must be a string, got ", config["task"].dump());
    return config["task"].get<std::string>();
  }
  return config.contains("corpus") ? "lm" : "vit";  // format 1: before runs named their task
}

const TaskKind& task_kind_of(const nlohmann::json& config) { return task_kind(task_name_of(config)); }

}  // namespace quest::tasks
