// quest plot <dir>: every metrics.jsonl below <dir> (one run, or a compare directory with one run
// per kind and seed) becomes gnuplot data, and gnuplot draws PNGs: loss and accuracy per epoch,
// and per layer max |q|, max |k|, max |logit| and mean entropy over training, one curve per run.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "gnuplot.h"

namespace quest::cli {
namespace {

namespace fs = std::filesystem;

struct Run {
  std::string label;  // path of the run relative to <dir>, e.g. "quest/seed-0"
  fs::path epochs_dat;
  std::vector<fs::path> layer_dat;  // one per layer
};

Run convert(const fs::path& metrics, const fs::path& root, const fs::path& data_dir, size_t index) {
  Run run;
  run.label = fs::relative(metrics.parent_path(), root).string();
  if (run.label == ".") run.label = metrics.parent_path().filename().string();
  run.epochs_dat = data_dir / ("run" + std::to_string(index) + "_epochs.dat");
  std::ofstream epochs(run.epochs_dat);
  epochs << "# epoch train_loss val_loss train_accuracy val_accuracy\n";
  std::vector<std::ofstream> layers;
  std::ifstream in(metrics);
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(metrics.string() + ":" + std::to_string(line_no) + ": not JSON (" + e.what() + ")");
    }
    if (j.value("type", "") == "epoch") {
      epochs << j["epoch"].get<int64_t>() + 1 << " " << j["train_loss"].get<double>() << " "
             << j["val_loss"].get<double>() << " " << j["train_accuracy"].get<double>() << " "
             << j["val_accuracy"].get<double>() << "\n";
    } else if (j.value("type", "") == "step" && j.contains("attention")) {
      const auto& att = j["attention"];
      for (size_t l = 0; l < att.size(); ++l) {
        if (layers.size() <= l) {
          run.layer_dat.push_back(data_dir / ("run" + std::to_string(index) + "_layer" + std::to_string(l) + ".dat"));
          layers.emplace_back(run.layer_dat.back());
          layers.back() << "# step q_norm_max k_norm_max logit_abs_max entropy_mean\n";
        }
        auto max_of = [](const nlohmann::json& v) {
          double m = 0;
          for (double x : v) m = std::max(m, x);
          return m;
        };
        double entropy = 0;
        for (double x : att[l]["entropy"]) entropy += x;
        entropy /= std::max<size_t>(1, att[l]["entropy"].size());
        layers[l] << j["step"].get<int64_t>() << " " << max_of(att[l]["q_norm_max"]) << " "
                  << max_of(att[l]["k_norm_max"]) << " " << max_of(att[l]["logit_abs_max"]) << " "
                  << entropy << "\n";
      }
    }
  }
  return run;
}

}  // namespace

void write_plots(const std::string& dir_text) {
  const fs::path dir(dir_text);
  if (!fs::is_directory(dir)) throw CLI::ValidationError("plot", "'" + dir_text + "' is not a directory");
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() == "metrics.jsonl") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  if (files.empty()) throw CLI::ValidationError("plot", "no metrics.jsonl below '" + dir_text + "'");
  const fs::path out = dir / "plots", data = out / "data";
  fs::create_directories(data);
  std::vector<Run> runs;
  for (size_t i = 0; i < files.size(); ++i) runs.push_back(convert(files[i], dir, data, i));

  // One colour per kind (the first part of "<kind>/seed-<s>"), one dash pattern per seed.
  std::map<std::string, int> colour, dash;
  std::vector<std::string> styles;
  for (const Run& r : runs) {
    const auto slash = r.label.find('/');
    const std::string group = r.label.substr(0, slash);
    const std::string member = slash == std::string::npos ? "" : r.label.substr(slash + 1);
    colour.emplace(group, static_cast<int>(colour.size()) + 1);
    dash.emplace(member, static_cast<int>(dash.size()) + 1);
    styles.push_back(" lc " + std::to_string(colour[group]) + " dt " + std::to_string(dash[member]));
  }
  std::ostringstream gp;
  gp << kGnuplotHeader;
  auto curves = [&](const std::function<std::string(const Run&)>& file, int column,
                    const std::string& suffix) {
    std::string s;
    for (size_t i = 0; i < runs.size(); ++i) {
      const std::string f = file(runs[i]);
      if (f.empty()) continue;
      s += (s.empty() ? "plot " : ", ") + gnuplot_quote(f) + " using 1:" + std::to_string(column) +
           " with lines" + styles[i] + " title " + gnuplot_quote(runs[i].label + suffix);
    }
    return s;
  };
  auto epochs = [](const Run& r) { return r.epochs_dat.string(); };
  gp << "set output " << gnuplot_quote((out / "loss.png").string()) << "\nset multiplot layout 1,2\n"
     << "set xlabel 'epoch'\nset title 'train loss'\n" << curves(epochs, 2, "") << "\n"
     << "set title 'validation loss'\n" << curves(epochs, 3, "") << "\nunset multiplot\n";
  gp << "set output " << gnuplot_quote((out / "accuracy.png").string()) << "\nset multiplot layout 1,2\n"
     << "set title 'train accuracy'\n" << curves(epochs, 4, "") << "\n"
     << "set title 'validation accuracy'\n" << curves(epochs, 5, "") << "\nunset multiplot\n";
  size_t n_layers = 0;
  for (const Run& r : runs) n_layers = std::max(n_layers, r.layer_dat.size());
  const std::pair<const char*, int> metrics[] = {
      {"q_norm_max", 2}, {"k_norm_max", 3}, {"logit_abs_max", 4}, {"entropy", 5}};
  if (n_layers > 0) {
    const size_t cols = std::min<size_t>(n_layers, 3), rows = (n_layers + cols - 1) / cols;
    for (const auto& [name, column] : metrics) {
      gp << "set output " << gnuplot_quote((out / (std::string(name) + ".png")).string()) << "\n"
         << "set multiplot layout " << rows << "," << cols << " title '" << name << " per layer'\n"
         << "set xlabel 'step'\nset key inside top left\n";
      for (size_t l = 0; l < n_layers; ++l) {
        gp << "set title 'layer " << l << "'\n"
           << curves([l](const Run& r) { return l < r.layer_dat.size() ? r.layer_dat[l].string() : std::string(); },
                     column, "")
           << "\n";
      }
      gp << "unset multiplot\nset key outside right\n";
    }
  }
  run_gnuplot(out / "plots.gp", gp.str());
  std::printf("plots of %zu run(s) in %s (loss, accuracy%s)\n", runs.size(), out.string().c_str(),
              n_layers ? ", q_norm_max, k_norm_max, logit_abs_max, entropy" : "");
}

void add_plot(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("plot", "PNG plots (gnuplot) of a run or compare directory");
  cmd->add_option("dir", *dir, "A run directory, or a directory of runs (quest compare's --out-dir)")->required();
  cmd->callback([dir] { write_plots(*dir); });
}

}  // namespace quest::cli
