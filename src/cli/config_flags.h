// Flags that override keys of a task's JSON config, each declared once — the flag, the key it
// sets, its help and check — and resolved the one way: the --config file (or the task's defaults)
// with every given flag on top, read by the task's own from_json, which checks keys, types and
// names as it does for a file. A bad value's error names the file or the flag.
#pragma once

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace quest::cli {

class ConfigFlags {
 public:
  // Adds --config to `cmd`; `help` says what the file holds.
  ConfigFlags(CLI::App* cmd, const std::string& help);

  // `flag` sets `key` ("lr", or "model.dim" inside an object) to its value when given.
  template <class T>
  CLI::Option* add(const std::string& flag, const std::string& key, const std::string& help = "") {
    auto value = std::make_shared<T>();
    CLI::Option* option = cmd_->add_option(flag, *value, help);
    overrides_.push_back({option, key, [value] { return nlohmann::json(*value); }});
    return option;
  }
  // A flag without a value that sets `key` to `value` (--no-augment: augment = false).
  CLI::Option* add_switch(const std::string& flag, const std::string& key, nlohmann::json value,
                          const std::string& help);

  // The config: `parse` (the task's from_json) of the file's JSON with the given flags on top.
  template <class Parse>
  auto resolve(const Parse& parse) const -> decltype(parse(nlohmann::json{})) {
    nlohmann::json j = file();
    if (!path_.empty()) named("--config: '" + path_ + "'", [&] { parse(j); });
    for (const Override& o : overrides_)
      if (o.option->count() > 0) {
        set(j, o.key, o.value());
        named(o.option->get_name(), [&] { parse(j); });
      }
    return parse(j);
  }

 private:
  struct Override {
    CLI::Option* option;
    std::string key;
    std::function<nlohmann::json()> value;
  };
  nlohmann::json file() const;  // {} without --config
  static void set(nlohmann::json& j, const std::string& key, nlohmann::json value);
  // Runs `f`; a config error it raises becomes std::invalid_argument prefixed with `who`.
  static void named(const std::string& who, const std::function<void()>& f);

  CLI::App* cmd_;
  std::string path_;
  std::vector<Override> overrides_;
};

// The settings every task shares (training::RunSettings): --epochs, --batch-size, --lr, --min-lr,
// --weight-decay, --warmup-epochs, --clip-grad-norm, --log-every. Not --seed: a comparison takes
// --seeds, so only the single-run commands add it.
void add_run_settings_flags(ConfigFlags& flags);

}  // namespace quest::cli
