// One function per `quest <command>`: each registers its options on the CLI11 app.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace quest::cli {

void add_demo(CLI::App& app);
void add_info(CLI::App& app);
void add_bench(CLI::App& app);
// Sets exit_code to the command's exit status (non-zero when training diverges).
void add_train(CLI::App& app, int& exit_code);
void add_plot(CLI::App& app);
// PNGs of every run below `dir` (what `quest plot <dir>` does).
void write_plots(const std::string& dir);
// quest robustness and quest attack.
void add_robustness(CLI::App& app, int& exit_code);
// quest experiment spurious.
void add_experiment(CLI::App& app);

}  // namespace quest::cli
