// quest plot <dir>: flags -> report::write_training_plots -> print.
#include <cstdio>

#include "commands.h"
#include "quest/lab/report/plots.h"

namespace quest::cli {

void add_plot(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("plot", "PNG plots (gnuplot) of a run or compare directory");
  cmd->add_option("dir", *dir, "A run directory, or a directory of runs (quest compare's --out-dir)")->required();
  cmd->callback([dir] {
    const auto plots = report::write_training_plots(*dir);
    std::printf("plots of %zu run(s) in %s (loss, accuracy%s)\n", plots.runs, plots.dir.c_str(),
                plots.layers ? ", q_norm_max, k_norm_max, logit_abs_max, entropy" : "");
  });
}

}  // namespace quest::cli
