// One function per `quest <command>`: each registers its flags; its callback turns them into one
// library call and prints. Errors are exceptions, reported once by main().
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace quest::cli {

void add_demo(CLI::App& app);
void add_info(CLI::App& app);
void add_bench(CLI::App& app);
// Exit codes: 0 done, 1 an error (printed once by main), kExitDiverged a training run diverged.
inline constexpr int kExitDiverged = 3;
// Ends `quest` with `code` and nothing printed (CLI11 passes a RuntimeError's code through
// App::exit); 0 returns normally. For callbacks whose command has an exit code of its own.
inline void exit_with(int code) {
  if (code != 0) throw CLI::RuntimeError(code);
}

void add_train(CLI::App& app);
void add_compare(CLI::App& app);
void add_lm(CLI::App& app);
void add_plot(CLI::App& app);
void add_robustness(CLI::App& app);
void add_experiment(CLI::App& app);
// `name` and the options given to `cmd`, as written to an experiment's results (its command).
std::string command_line(const std::string& name, const CLI::App* cmd);
// quest experiment lr-sweep (a subcommand of `experiment`).
void add_lr_sweep(CLI::App* experiment);

}  // namespace quest::cli
