#include "quest/lab/report/plots.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "quest/lab/runs/run_dir.h"

namespace quest::report {

namespace fs = std::filesystem;

std::string gnuplot_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += (c == '\'') ? std::string("''") : std::string(1, c);
  return out + "'";
}

void run_gnuplot(const fs::path& path, const std::string& script) {
  std::ofstream(path) << script;
  const std::string cmd = "gnuplot " + gnuplot_quote(path.string());
  if (std::system(cmd.c_str()) != 0)
    throw std::runtime_error("gnuplot failed on " + path.string() + " (is gnuplot-nox installed?)");
}

const char* const kGnuplotHeader =
    "set terminal pngcairo size 1400,900 font ',10' noenhanced\nset key outside right\nset grid\n";

namespace {

struct PlottedRun {
  std::string label;  // path of the run relative to the root, e.g. "quest/seed-0"
  fs::path epochs_dat;
  fs::path steps_dat;  // logged steps: loss, log-partition of the output logits
  bool has_step_loss = false, has_log_z = false;  // metrics older than log_z have none
  std::vector<fs::path> layer_dat;  // one per layer
};

double max_of(const nlohmann::json& v) {
  double m = 0;
  for (double x : v) m = std::max(m, x);
  return m;
}

PlottedRun convert(const runs::RunDir& run, const fs::path& root, const fs::path& data_dir, size_t index) {
  PlottedRun p;
  p.label = fs::relative(run.root(), root).string();
  if (p.label == ".") p.label = run.root().filename().string();
  p.epochs_dat = data_dir / ("run" + std::to_string(index) + "_epochs.dat");
  std::ofstream epochs(p.epochs_dat);
  epochs << "# epoch train_loss val_loss train_accuracy val_accuracy\n";
  p.steps_dat = data_dir / ("run" + std::to_string(index) + "_steps.dat");
  std::ofstream steps(p.steps_dat);
  steps << "# step loss log_z\n";
  std::vector<std::ofstream> layers;
  for (const auto& j : run.read_metrics()) {
    if (j.value("type", "") == "epoch") {
      epochs << j["epoch"].get<int64_t>() + 1 << " " << j.value("train_loss", 0.0) << " "
             << j.value("val_loss", 0.0) << " " << j.value("train_accuracy", 0.0) << " "
             << j.value("val_accuracy", 0.0) << "\n";
    } else if (j.value("type", "") == "step" && j.contains("attention")) {
      auto number = [](const nlohmann::json& v) { return v.is_number() ? v.get<double>() : NAN; };
      const double loss = number(j.value("loss", nlohmann::json())), log_z = number(j.value("log_z", nlohmann::json()));
      p.has_step_loss |= std::isfinite(loss);
      p.has_log_z |= std::isfinite(log_z);
      steps << j["step"].get<int64_t>() << " " << loss << " " << log_z << "\n";
      const auto& att = j["attention"];
      for (size_t l = 0; l < att.size(); ++l) {
        if (layers.size() <= l) {
          p.layer_dat.push_back(data_dir / ("run" + std::to_string(index) + "_layer" + std::to_string(l) + ".dat"));
          layers.emplace_back(p.layer_dat.back());
          layers.back() << "# step q_norm_max k_norm_max logit_abs_max entropy_mean\n";
        }
        double entropy = 0;
        for (double x : att[l]["entropy"]) entropy += x;
        entropy /= std::max<size_t>(1, att[l]["entropy"].size());
        layers[l] << j["step"].get<int64_t>() << " " << max_of(att[l]["q_norm_max"]) << " "
                  << max_of(att[l]["k_norm_max"]) << " " << max_of(att[l]["logit_abs_max"]) << " "
                  << entropy << "\n";
      }
    }
  }
  return p;
}

}  // namespace

std::vector<fs::path> training_runs(const fs::path& root) {
  std::vector<fs::path> run_roots;
  if (!fs::is_directory(root)) return run_roots;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file() && e.path() == runs::RunDir(e.path().parent_path()).metrics())
      run_roots.push_back(e.path().parent_path());
  std::sort(run_roots.begin(), run_roots.end());
  return run_roots;
}

TrainingPlots write_training_plots(const fs::path& root) {
  if (!fs::is_directory(root)) throw std::invalid_argument("'" + root.string() + "' is not a directory");
  const std::vector<fs::path> run_roots = training_runs(root);
  if (run_roots.empty()) throw std::invalid_argument("no run (metrics.jsonl) below '" + root.string() + "'");
  const fs::path out = root / "plots", data = out / "data";
  fs::create_directories(data);
  std::vector<PlottedRun> plotted;
  for (size_t i = 0; i < run_roots.size(); ++i) plotted.push_back(convert(runs::RunDir(run_roots[i]), root, data, i));

  // One colour per kind (the first part of "<kind>/seed-<s>"), one dash pattern per seed.
  std::map<std::string, int> colour, dash;
  std::vector<std::string> styles;
  for (const PlottedRun& r : plotted) {
    const auto slash = r.label.find('/');
    const std::string group = r.label.substr(0, slash);
    const std::string member = slash == std::string::npos ? "" : r.label.substr(slash + 1);
    colour.emplace(group, static_cast<int>(colour.size()) + 1);
    dash.emplace(member, static_cast<int>(dash.size()) + 1);
    styles.push_back(" lc " + std::to_string(colour[group]) + " dt " + std::to_string(dash[member]));
  }
  std::ostringstream gp;
  gp << kGnuplotHeader;
  auto curves = [&](const std::function<std::string(const PlottedRun&)>& file, int column) {
    std::string s;
    for (size_t i = 0; i < plotted.size(); ++i) {
      const std::string f = file(plotted[i]);
      if (f.empty()) continue;
      s += (s.empty() ? "plot " : ", ") + gnuplot_quote(f) + " using 1:" + std::to_string(column) +
           " with lines" + styles[i] + " title " + gnuplot_quote(plotted[i].label);
    }
    return s;
  };
  auto epochs = [](const PlottedRun& r) { return r.epochs_dat.string(); };
  gp << "set output " << gnuplot_quote((out / "loss.png").string()) << "\nset multiplot layout 1,2\n"
     << "set xlabel 'epoch'\nset title 'train loss'\n" << curves(epochs, 2) << "\n"
     << "set title 'validation loss'\n" << curves(epochs, 3) << "\nunset multiplot\n";
  // gnuplot refuses a plot without a single valid point: only runs (and panels) with data.
  auto step_loss = [](const PlottedRun& r) { return r.has_step_loss ? r.steps_dat.string() : std::string(); };
  auto log_z = [](const PlottedRun& r) { return r.has_log_z ? r.steps_dat.string() : std::string(); };
  const bool any_loss = std::any_of(plotted.begin(), plotted.end(), [](const auto& r) { return r.has_step_loss; });
  const bool any_log_z = std::any_of(plotted.begin(), plotted.end(), [](const auto& r) { return r.has_log_z; });
  if (any_loss) {
    gp << "set output " << gnuplot_quote((out / "steps.png").string()) << "\nset multiplot layout 1,"
       << (any_log_z ? 2 : 1) << "\nset xlabel 'step'\nset title 'train loss (logged steps)'\n"
       << curves(step_loss, 2) << "\n";
    if (any_log_z) gp << "set title 'log Z of the output logits (mean log-partition)'\n" << curves(log_z, 3) << "\n";
    gp << "unset multiplot\nset xlabel 'epoch'\n";
  }
  gp << "set output " << gnuplot_quote((out / "accuracy.png").string()) << "\nset multiplot layout 1,2\n"
     << "set title 'train accuracy'\n" << curves(epochs, 4) << "\n"
     << "set title 'validation accuracy'\n" << curves(epochs, 5) << "\nunset multiplot\n";
  size_t n_layers = 0;
  for (const PlottedRun& r : plotted) n_layers = std::max(n_layers, r.layer_dat.size());
  const std::pair<const char*, int> metrics[] = {
      {"q_norm_max", 2}, {"k_norm_max", 3}, {"logit_abs_max", 4}, {"entropy", 5}};
  if (n_layers > 0) {
    const size_t cols = std::min<size_t>(n_layers, 3), rows = (n_layers + cols - 1) / cols;
    for (const auto& [name, column] : metrics) {
      gp << "set output " << gnuplot_quote((out / (std::string(name) + ".png")).string()) << "\n"
         << "set multiplot layout " << rows << "," << cols << " title '" << name << " per layer'\n"
         << "set xlabel 'step'\nset key inside top left\n";
      for (size_t l = 0; l < n_layers; ++l)
        gp << "set title 'layer " << l << "'\n"
           << curves([l](const PlottedRun& r) { return l < r.layer_dat.size() ? r.layer_dat[l].string() : std::string(); },
                     column)
           << "\n";
      gp << "unset multiplot\nset key outside right\n";
    }
  }
  run_gnuplot(out / "plots.gp", gp.str());
  return {plotted.size(), n_layers, out};
}

}  // namespace quest::report
