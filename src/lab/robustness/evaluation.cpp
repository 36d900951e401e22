#include "quest/lab/robustness/evaluation.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

#include "quest/lab/data/idx.h"
#include "quest/lab/report/plots.h"
#include "quest/lab/robustness/corruptions.h"

namespace quest::robustness {

namespace fs = std::filesystem;
using report::gnuplot_quote;
using report::mean_of;
using report::mean_std;
using report::std_of;

ModelSet load_models(const std::vector<std::string>& checkpoints, const std::string& data_dir, int64_t limit) {
  ModelSet set;
  const data::ImageSet raw = data::read_mnist_split(data_dir, "t10k");
  const int64_t n = limit > 0 ? std::min<int64_t>(limit, raw.labels.size(0)) : raw.labels.size(0);
  set.images = raw.images.narrow(0, 0, n).unsqueeze(1).to(torch::kFloat) / 255.0;
  set.labels = raw.labels.narrow(0, 0, n);
  std::optional<training::Normalization> recomputed;
  for (const std::string& path : checkpoints) {
    EvaluatedModel m;
    m.checkpoint = path;
    m.trainer = training::load_vit_run(path);
    m.kind = to_string(m.trainer->config().model.attention());
    m.seed = m.trainer->config().seed;
    m.trainer->model()->eval();
    std::optional<training::Normalization> norm = m.trainer->normalization();
    if (!norm) {  // written before quest saved it with the run
      if (!recomputed) recomputed = training::mnist_normalization(data_dir);
      norm = recomputed;
      set.notes.push_back(path + ": no normalisation saved with the run; recomputed from " + data_dir);
    }
    models::Vit net = m.trainer->model();
    const double mean = norm->mean, std = norm->std;
    m.classify = [net, mean, std](const torch::Tensor& x) mutable { return net->forward((x - mean) / std); };
    if (std::find(set.kinds.begin(), set.kinds.end(), m.kind) == set.kinds.end()) set.kinds.push_back(m.kind);
    set.models.push_back(std::move(m));
  }
  return set;
}

double accuracy(const EvaluatedModel& m, const torch::Tensor& images, const torch::Tensor& labels, int64_t batch) {
  torch::NoGradGuard no_grad;
  int64_t correct = 0;
  for (int64_t i = 0; i < images.size(0); i += batch) {
    const int64_t n = std::min(batch, images.size(0) - i);
    correct += m.classify(images.narrow(0, i, n)).argmax(1).eq(labels.narrow(0, i, n)).sum().item<int64_t>();
  }
  return static_cast<double>(correct) / images.size(0);
}

namespace {

// Values of `value(model)` over the checkpoints of one kind.
std::vector<double> of_kind(const ModelSet& set, const std::string& kind, const std::function<double(size_t)>& value) {
  std::vector<double> v;
  for (size_t i = 0; i < set.models.size(); ++i)
    if (set.models[i].kind == kind) v.push_back(value(i));
  return v;
}

nlohmann::json percent(const std::vector<double>& v) {
  std::vector<double> p;
  for (double x : v) p.push_back(100 * x);
  return mean_std(p);
}

}  // namespace

// ---------------------------------------------------------------------------- corruptions

void validate(const CorruptionOptions& o) {
  const auto known = corruption_names();
  for (const auto& c : o.corruptions)
    if (std::find(known.begin(), known.end(), c) == known.end())
      throw std::invalid_argument("--corruptions: unknown corruption '" + c + "'");
  for (int s : o.severities)
    if (s < 1 || s > 5) throw std::invalid_argument("--severities: severities are 1..5, got " + std::to_string(s));
}

CorruptionReport evaluate_corruptions(const ModelSet& set, const CorruptionOptions& options, const Progress& progress) {
  validate(options);
  CorruptionReport r;
  r.options = options;
  if (r.options.corruptions.empty()) r.options.corruptions = corruption_names();
  const auto& names = r.options.corruptions;
  const auto& severities = r.options.severities;
  const size_t M = set.models.size();
  r.test_images = set.labels.size(0);
  for (const auto& m : set.models) r.clean.push_back(accuracy(m, set.images, set.labels, options.batch_size));
  r.accuracy.assign(names.size(), std::vector<std::vector<double>>(severities.size()));
  const int64_t total = static_cast<int64_t>(names.size() * severities.size());
  int64_t done = 0;
  for (size_t c = 0; c < names.size(); ++c)
    for (size_t s = 0; s < severities.size(); ++s) {
      const torch::Tensor corrupted = corrupt(set.images, names[c], severities[s], options.seed);
      for (const auto& m : set.models) r.accuracy[c][s].push_back(accuracy(m, corrupted, set.labels, options.batch_size));
      if (progress) progress(++done, total, names[c] + " severity " + std::to_string(severities[s]));
    }
  std::vector<size_t> base;
  for (size_t i = 0; i < M; ++i)
    if (set.models[i].kind == options.baseline_kind) base.push_back(i);
  r.has_baseline = !base.empty();
  r.ce.assign(M, std::vector<double>(names.size(), NAN));
  r.mce.assign(M, NAN);
  r.mean_corrupted.assign(M, 0);
  for (size_t i = 0; i < M; ++i) {
    double sum_ce = 0;
    for (size_t c = 0; c < names.size(); ++c) {
      double err = 0, base_err = 0;
      for (size_t s = 0; s < severities.size(); ++s) {
        err += 1 - r.accuracy[c][s][i];
        r.mean_corrupted[i] += r.accuracy[c][s][i] / (names.size() * severities.size());
        for (size_t b : base) base_err += (1 - r.accuracy[c][s][b]) / base.size();
      }
      r.ce[i][c] = base.empty() ? NAN : err / base_err;
      sum_ce += r.ce[i][c];
    }
    r.mce[i] = sum_ce / names.size();
  }
  return r;
}

static double mean_over_severities(const CorruptionReport& r, size_t c, size_t i) {
  double a = 0;
  for (size_t s = 0; s < r.options.severities.size(); ++s) a += r.accuracy[c][s][i] / r.options.severities.size();
  return a;
}

report::Table corruption_table(const ModelSet& set, const CorruptionReport& r) {
  std::vector<report::Column> columns = {{"corruption"}};
  for (const auto& k : set.kinds) columns.push_back({k, 2});
  report::Table table(columns);
  auto row = [&](const std::string& label, const std::function<double(size_t)>& value) {
    std::vector<nlohmann::json> cells = {label};
    for (const auto& k : set.kinds) cells.push_back(percent(of_kind(set, k, value)));
    table.add_row(cells);
  };
  row("clean", [&](size_t i) { return r.clean[i]; });
  for (size_t c = 0; c < r.options.corruptions.size(); ++c)
    row(r.options.corruptions[c], [&](size_t i) { return mean_over_severities(r, c, i); });
  row("mean corrupted", [&](size_t i) { return r.mean_corrupted[i]; });
  row("mCE vs " + r.options.baseline_kind, [&](size_t i) { return r.mce[i]; });
  return table;
}

void write_corruption_outputs(const ModelSet& set, const CorruptionReport& r, const fs::path& dir) {
  const auto& names = r.options.corruptions;
  const auto& severities = r.options.severities;
  fs::create_directories(dir);
  std::ofstream csv(dir / "robustness.csv");
  csv << "checkpoint,kind,seed,corruption,severity,accuracy\n";
  nlohmann::json per_model = nlohmann::json::array();
  for (size_t i = 0; i < set.models.size(); ++i) {
    const auto& m = set.models[i];
    csv << m.checkpoint << "," << m.kind << "," << m.seed << ",clean,0," << r.clean[i] << "\n";
    nlohmann::json cj = nlohmann::json::object();
    for (size_t c = 0; c < names.size(); ++c) {
      for (size_t s = 0; s < severities.size(); ++s) {
        csv << m.checkpoint << "," << m.kind << "," << m.seed << "," << names[c] << "," << severities[s] << ","
            << r.accuracy[c][s][i] << "\n";
        cj[names[c]]["accuracy_by_severity"].push_back(r.accuracy[c][s][i]);
      }
      cj[names[c]]["ce"] = r.ce[i][c];
    }
    per_model.push_back({{"checkpoint", m.checkpoint}, {"kind", m.kind}, {"seed", m.seed},
                         {"clean_accuracy", r.clean[i]}, {"mean_corrupted_accuracy", r.mean_corrupted[i]},
                         {"mce", r.mce[i]}, {"corruptions", cj}});
  }
  nlohmann::json summary = nlohmann::json::object();
  for (const auto& k : set.kinds) {
    for (size_t c = 0; c < names.size(); ++c)
      summary[k]["corruption_accuracy"][names[c]] = mean_std(of_kind(set, k, [&](size_t i) { return mean_over_severities(r, c, i); }));
    summary[k]["clean_accuracy"] = mean_std(of_kind(set, k, [&](size_t i) { return r.clean[i]; }));
    summary[k]["mean_corrupted_accuracy"] = mean_std(of_kind(set, k, [&](size_t i) { return r.mean_corrupted[i]; }));
    summary[k]["mce"] = mean_std(of_kind(set, k, [&](size_t i) { return r.mce[i]; }));
    summary[k]["checkpoints"] = of_kind(set, k, [](size_t) { return 0.0; }).size();
  }
  nlohmann::json table = nlohmann::json::array();
  for (const auto& spec : corruption_table())
    table.push_back({{"name", spec.name}, {"family", spec.family}, {"formula", spec.formula},
                     {"severities", spec.severities}});
  std::ofstream(dir / "robustness.json")
      << nlohmann::json({{"test_images", r.test_images}, {"seed", r.options.seed}, {"severities", severities},
                         {"baseline_kind", r.options.baseline_kind}, {"summary", summary}, {"models", per_model},
                         {"corruption_definitions", table}})
             .dump(2)
      << "\n";

  // accuracy vs severity (0 = clean): the mean over corruptions, and one panel per corruption.
  const fs::path data = dir / "plot_data";
  fs::create_directories(data);
  std::ostringstream gp;
  gp << report::kGnuplotHeader << "set xlabel 'severity'\nset ylabel 'accuracy'\nset xtics 1\n";
  auto write_curve = [&](const std::string& kind, int c /* -1: mean */) {
    const fs::path file = data / (kind + "_" + (c < 0 ? std::string("mean") : names[c]) + ".dat");
    std::ofstream out(file);
    out << "0 " << mean_of(of_kind(set, kind, [&](size_t i) { return r.clean[i]; })) << "\n";
    for (size_t s = 0; s < severities.size(); ++s) {
      const auto v = of_kind(set, kind, [&](size_t i) {
        if (c >= 0) return r.accuracy[c][s][i];
        double a = 0;
        for (size_t cc = 0; cc < names.size(); ++cc) a += r.accuracy[cc][s][i] / names.size();
        return a;
      });
      out << severities[s] << " " << mean_of(v) << " " << std_of(v) << "\n";
    }
    return file;
  };
  auto curves = [&](int c) {
    std::string s = "plot ";
    for (size_t k = 0; k < set.kinds.size(); ++k)
      s += (k ? ", " : "") + gnuplot_quote(write_curve(set.kinds[k], c).string()) +
           " using 1:2 with linespoints title " + gnuplot_quote(set.kinds[k]);
    return s + "\n";
  };
  gp << "set output " << gnuplot_quote((dir / "accuracy_vs_severity.png").string()) << "\n"
     << "set title 'mean accuracy over " << names.size() << " corruptions (mean over checkpoints)'\n" << curves(-1);
  const size_t cols = std::min<size_t>(names.size(), 4), rows = (names.size() + cols - 1) / cols;
  gp << "set output " << gnuplot_quote((dir / "accuracy_by_corruption.png").string()) << "\n"
     << "set terminal pngcairo size 1600," << 300 * rows << " font ',9' noenhanced\nset key inside bottom left\n"
     << "set multiplot layout " << rows << "," << cols << "\n";
  for (size_t c = 0; c < names.size(); ++c) gp << "set title " << gnuplot_quote(names[c]) << "\n" << curves(int(c));
  gp << "unset multiplot\n";
  report::run_gnuplot(data / "robustness.gp", gp.str());
}

// ---------------------------------------------------------------------------- attacks

std::vector<AttackKind> validate(const AttackSweepOptions& o) {
  std::vector<AttackKind> attacks;
  for (const auto& name : o.attacks) {
    const auto k = parse_attack(name);
    if (!k) throw std::invalid_argument("--attacks: unknown attack '" + name + "' (fgsm, pgd_linf, pgd_l2)");
    attacks.push_back(*k);
  }
  for (double e : o.eps)
    if (!(e >= 0)) throw std::invalid_argument("--eps: radii must be >= 0");
  for (double e : o.l2_eps)
    if (!(e >= 0)) throw std::invalid_argument("--l2-eps: radii must be >= 0");
  if (o.steps < 1) throw std::invalid_argument("--steps must be >= 1");
  return attacks;
}

AttackReport evaluate_attacks(const ModelSet& set, const AttackSweepOptions& options, const Progress& progress) {
  AttackReport r;
  r.options = options;
  r.attacks = validate(options);
  const int64_t n = set.labels.size(0), batch = options.batch_size;
  r.test_images = n;
  const size_t M = set.models.size();
  r.accuracy.assign(M, std::vector<std::vector<double>>(r.attacks.size()));
  int64_t units = 0, done = 0;  // progress in (image x gradient step)
  auto cost = [&](AttackKind k, double eps) { return eps == 0 ? 0 : (k == AttackKind::fgsm ? 1 : options.steps); };
  for (AttackKind k : r.attacks)
    for (double e : options.radii(k)) units += cost(k, e) * n;
  units *= M;
  for (size_t i = 0; i < M; ++i) {
    const auto& model = set.models[i];
    r.clean.push_back(accuracy(model, set.images, set.labels, batch));
    for (size_t t = 0; t < r.attacks.size(); ++t) {
      const AttackKind kind = r.attacks[t];
      const auto& radii = options.radii(kind);
      for (double eps : radii) {
        AttackOptions o;
        o.kind = kind;
        o.eps = eps;
        o.steps = options.steps;
        o.step_ratio = options.step_ratio;
        auto gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
        int64_t correct = 0;
        double worst = 0;
        for (int64_t b = 0; b < n; b += batch) {
          const int64_t m = std::min(batch, n - b);
          const torch::Tensor x = set.images.narrow(0, b, m), y = set.labels.narrow(0, b, m);
          const torch::Tensor adv = attack(model.classify, x, y, o, gen);
          worst = std::max(worst, max_perturbation(kind, adv, x));
          TORCH_CHECK(adv.min().item<float>() >= 0 && adv.max().item<float>() <= 1, "attack ", to_string(kind),
                      " produced pixels outside [0, 1]");
          torch::NoGradGuard no_grad;
          correct += model.classify(adv).argmax(1).eq(y).sum().item<int64_t>();
          done += cost(kind, eps) * m;
          if (progress) {
            char line[200];
            std::snprintf(line, sizeof line, "%s [%zu/%zu] %s eps %.4f  %lld/%lld images", model.kind.c_str(), i + 1,
                          M, to_string(kind).c_str(), eps, (long long)(b + m), (long long)n);
            progress(done, units, line);
          }
        }
        TORCH_CHECK(worst <= eps * (1 + 1e-5) + 1e-6, "attack ", to_string(kind), " left its eps-ball: ", worst,
                    " > ", eps);
        r.accuracy[i][t].push_back(static_cast<double>(correct) / n);
        if (eps == 0 && std::abs(r.accuracy[i][t].back() - r.clean[i]) > 1e-12) {
          r.eps0_is_clean = false;
          r.warnings.push_back(model.checkpoint + ": " + to_string(kind) + " at eps 0 gives " +
                               std::to_string(r.accuracy[i][t].back()) + ", clean accuracy is " +
                               std::to_string(r.clean[i]));
        }
      }
      const auto& v = r.accuracy[i][t];
      for (size_t e = 1; e < v.size(); ++e)
        if (kind != AttackKind::fgsm && radii[e] > radii[e - 1] && v[e] > v[e - 1]) {
          r.pgd_monotone = false;
          r.warnings.push_back(model.checkpoint + ": " + to_string(kind) + " accuracy rises from eps " +
                               std::to_string(radii[e - 1]) + " to " + std::to_string(radii[e]) + " (" +
                               std::to_string(v[e - 1]) + " -> " + std::to_string(v[e]) + ")");
        }
    }
  }
  return r;
}

report::Table attack_table(const ModelSet& set, const AttackReport& r) {
  std::vector<report::Column> columns = {{"attack"}, {"eps", 4}};
  for (const auto& k : set.kinds) columns.push_back({k, 2});
  report::Table table(columns);
  for (size_t t = 0; t < r.attacks.size(); ++t) {
    const auto& radii = r.options.radii(r.attacks[t]);
    for (size_t e = 0; e < radii.size(); ++e) {
      std::vector<nlohmann::json> cells = {to_string(r.attacks[t]), radii[e]};
      for (const auto& k : set.kinds) cells.push_back(percent(of_kind(set, k, [&](size_t i) { return r.accuracy[i][t][e]; })));
      table.add_row(cells);
    }
  }
  return table;
}

void write_attack_outputs(const ModelSet& set, const AttackReport& r, const fs::path& dir) {
  fs::create_directories(dir);
  const fs::path data = dir / "plot_data";
  fs::create_directories(data);
  std::ofstream csv(dir / "attack.csv");
  csv << "checkpoint,kind,seed,attack,eps,accuracy\n";
  nlohmann::json summary = nlohmann::json::array();
  std::ostringstream gp;
  gp << report::kGnuplotHeader << "set output " << gnuplot_quote((dir / "accuracy_vs_eps.png").string())
     << "\nset multiplot layout 1," << r.attacks.size() << "\nset ylabel 'accuracy'\nset key inside top right\n";
  for (size_t t = 0; t < r.attacks.size(); ++t) {
    const std::string name = to_string(r.attacks[t]);
    const auto& radii = r.options.radii(r.attacks[t]);
    std::map<std::string, std::ofstream> dat;
    for (size_t e = 0; e < radii.size(); ++e)
      for (const auto& k : set.kinds) {
        const auto v = of_kind(set, k, [&](size_t i) { return r.accuracy[i][t][e]; });
        summary.push_back({{"attack", name}, {"eps", radii[e]}, {"kind", k}, {"accuracy_mean", mean_of(v)},
                           {"accuracy_std", std_of(v)}, {"checkpoints", v.size()}});
        if (!dat.count(k)) dat[k].open(data / (name + "_" + k + ".dat"));
        dat[k] << radii[e] << " " << mean_of(v) << " " << std_of(v) << "\n";
      }
    gp << "set xlabel 'eps (" << (r.attacks[t] == AttackKind::pgd_l2 ? "L2" : "L-inf") << ")'\nset title "
       << gnuplot_quote(name) << "\nplot ";
    for (size_t k = 0; k < set.kinds.size(); ++k)
      gp << (k ? ", " : "") << gnuplot_quote((data / (name + "_" + set.kinds[k] + ".dat")).string())
         << " using 1:2 with linespoints title " << gnuplot_quote(set.kinds[k]);
    gp << "\n";
  }
  gp << "unset multiplot\n";
  nlohmann::json per_model = nlohmann::json::array();
  for (size_t i = 0; i < set.models.size(); ++i) {
    const auto& m = set.models[i];
    nlohmann::json aj = nlohmann::json::object();
    for (size_t t = 0; t < r.attacks.size(); ++t) {
      const auto& radii = r.options.radii(r.attacks[t]);
      for (size_t e = 0; e < radii.size(); ++e) {
        csv << m.checkpoint << "," << m.kind << "," << m.seed << "," << to_string(r.attacks[t]) << "," << radii[e]
            << "," << r.accuracy[i][t][e] << "\n";
        aj[to_string(r.attacks[t])].push_back({{"eps", radii[e]}, {"accuracy", r.accuracy[i][t][e]}});
      }
    }
    per_model.push_back({{"checkpoint", m.checkpoint}, {"kind", m.kind}, {"seed", m.seed},
                         {"clean_accuracy", r.clean[i]}, {"attacks", aj}});
  }
  std::ofstream(dir / "attack.json")
      << nlohmann::json({{"test_images", r.test_images}, {"steps", r.options.steps},
                         {"step_ratio", r.options.step_ratio}, {"seed", r.options.seed}, {"summary", summary},
                         {"models", per_model}, {"warnings", r.warnings}})
             .dump(2)
      << "\n";
  report::run_gnuplot(data / "attack.gp", gp.str());
}

}  // namespace quest::robustness
