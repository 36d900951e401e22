#include "config_flags.h"

#include <fstream>

namespace quest::cli {

ConfigFlags::ConfigFlags(CLI::App* cmd, const std::string& help) : cmd_(cmd) {
  cmd->add_option("--config", path_, help);
}

CLI::Option* ConfigFlags::add_switch(const std::string& flag, const std::string& key, nlohmann::json value,
                                     const std::string& help) {
  CLI::Option* option = cmd_->add_flag(flag, help);
  overrides_.push_back({option, key, [value] { return value; }});
  return option;
}

nlohmann::json ConfigFlags::file() const {
  if (path_.empty()) return nlohmann::json::object();
  std::ifstream in(path_);
  if (!in) throw std::invalid_argument("--config: cannot read '" + path_ + "'");
  nlohmann::json j;
  named("--config: '" + path_ + "'", [&] { j = nlohmann::json::parse(in); });
  return j;
}

void ConfigFlags::set(nlohmann::json& j, const std::string& key, nlohmann::json value) {
  nlohmann::json* at = &j;
  size_t begin = 0;
  for (size_t dot; (dot = key.find('.', begin)) != std::string::npos; begin = dot + 1) {
    at = &(*at)[key.substr(begin, dot - begin)];
    if (at->is_null()) *at = nlohmann::json::object();
  }
  (*at)[key.substr(begin)] = std::move(value);
}

void ConfigFlags::named(const std::string& who, const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    throw std::invalid_argument(who + ": " + e.what_without_backtrace());
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(who + ": " + e.what());
  }
}

void add_run_settings_flags(ConfigFlags& f) {
  const auto positive = CLI::Range(int64_t{1}, int64_t{1} << 30);
  f.add<int64_t>("--epochs", "epochs")->check(positive);
  f.add<int64_t>("--batch-size", "batch_size")->check(positive);
  f.add<double>("--lr", "lr", "Peak learning rate")->check(CLI::PositiveNumber);
  f.add<double>("--min-lr", "min_lr")->check(CLI::NonNegativeNumber);
  f.add<double>("--weight-decay", "weight_decay")->check(CLI::NonNegativeNumber);
  f.add<double>("--warmup-epochs", "warmup_epochs")->check(CLI::NonNegativeNumber);
  f.add<double>("--clip-grad-norm", "clip_grad_norm", "<= 0 turns clipping off");
  f.add<int64_t>("--log-every", "log_every", "Steps between metric lines")->check(CLI::NonNegativeNumber);
  f.add<std::string>("--autocast", "autocast", "Mixed precision of the training forward: off or bf16")
      ->check(CLI::IsMember({"off", "bf16"}));
}

}  // namespace quest::cli
