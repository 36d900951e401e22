// Figures through gnuplot (Debian's gnuplot-nox): quoting, running a script, and the training
// curves of run directories.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace quest::report {

// A gnuplot single-quoted string ('' escapes a quote).
std::string gnuplot_quote(const std::string& s);

// Writes `script` to `path` and runs gnuplot on it; throws std::runtime_error if gnuplot fails.
void run_gnuplot(const std::filesystem::path& path, const std::string& script);

// The PNG terminal every quest figure starts from.
extern const char* const kGnuplotHeader;

struct TrainingPlots {
  size_t runs = 0, layers = 0;
  std::filesystem::path dir;  // <root>/plots
};

// The run directories below `root` (each with a metrics.jsonl), sorted; none where `root` is
// absent (e.g. a sweep point whose runs were all taken from a record).
std::vector<std::filesystem::path> training_runs(const std::filesystem::path& root);

// Every run directory below `root` (each with a metrics.jsonl: one run, or a compare directory
// with <kind>/seed-<s>) drawn into <root>/plots: loss.png and accuracy.png per epoch, steps.png
// (training loss and the output logits' log-partition over logged steps), and per
// layer q_norm_max, k_norm_max, logit_abs_max and entropy over steps; one colour per kind, one
// dash pattern per seed. Throws std::invalid_argument when `root` holds no run.
TrainingPlots write_training_plots(const std::filesystem::path& root);

}  // namespace quest::report
