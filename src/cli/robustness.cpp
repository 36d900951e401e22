// quest robustness <checkpoints...>: accuracy under common corruptions (corruption x severity),
// corruption errors normalised by a baseline kind and mCE.
// quest attack <checkpoints...>: accuracy under FGSM, PGD-Linf and PGD-L2 for a list of radii.
// Both evaluate every checkpoint on the same images, print a table per attention kind (mean ± std
// over the checkpoints of that kind, i.e. over seeds), and write JSON, CSV and PNG.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "gnuplot.h"
#include "quest/data/idx.h"
#include "quest/quest.h"
#include "quest/robustness/attacks.h"
#include "quest/robustness/corruptions.h"
#include "quest/training/trainer.h"
#include "stats.h"

namespace quest::cli {
namespace {

namespace fs = std::filesystem;
using robustness::AttackKind;

struct Model {
  std::string checkpoint, kind;
  uint64_t seed = 0;
  std::unique_ptr<training::Trainer> trainer;
  robustness::Classifier classify;  // [0, 1] images -> logits
};

struct TestSet {
  torch::Tensor images;  // (N, 1, H, W) float in [0, 1]
  torch::Tensor labels;
};

struct CommonFlags {
  std::vector<std::string> checkpoints;
  std::string data_dir = data::kFashionMnistDir, out_dir;
  int64_t limit = 0, batch_size = 500;
  uint64_t seed = 0;
};

// Every checkpoint with its run's config; inputs are normalised as in training (the training
// images' statistics of data_dir).
std::vector<Model> load_models(const CommonFlags& f, TestSet& test) {
  const training::MnistSplits splits = training::load_mnist_splits(f.data_dir, 0.0, 0);
  const data::ImageSet raw = data::read_mnist_split(f.data_dir, "t10k");
  const int64_t n = f.limit > 0 ? std::min<int64_t>(f.limit, raw.labels.size(0)) : raw.labels.size(0);
  test = {raw.images.narrow(0, 0, n).unsqueeze(1).to(torch::kFloat) / 255.0, raw.labels.narrow(0, 0, n)};
  std::vector<Model> models;
  for (const std::string& path : f.checkpoints) {
    Model m;
    m.checkpoint = path;
    m.trainer = training::load_run(path);
    m.kind = to_string(m.trainer->config().model.attention());
    m.seed = m.trainer->config().seed;
    m.trainer->model()->eval();
    const double mean = splits.mean, std = splits.std;
    models::Vit net = m.trainer->model();
    m.classify = [net, mean, std](const torch::Tensor& x) mutable { return net->forward((x - mean) / std); };
    models.push_back(std::move(m));
  }
  return models;
}

double accuracy(const Model& m, const torch::Tensor& images, const torch::Tensor& labels, int64_t batch) {
  torch::NoGradGuard no_grad;
  int64_t correct = 0;
  for (int64_t i = 0; i < images.size(0); i += batch) {
    const int64_t n = std::min(batch, images.size(0) - i);
    correct += m.classify(images.narrow(0, i, n)).argmax(1).eq(labels.narrow(0, i, n)).sum().item<int64_t>();
  }
  return static_cast<double>(correct) / images.size(0);
}

std::vector<std::string> kinds_in_order(const std::vector<Model>& models) {
  std::vector<std::string> kinds;
  for (const auto& m : models)
    if (std::find(kinds.begin(), kinds.end(), m.kind) == kinds.end()) kinds.push_back(m.kind);
  return kinds;
}

std::string pm(const std::vector<double>& v, double scale = 100) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f ± %.2f", scale * mean_of(v), scale * std_of(v));
  return buf;
}

// One progress line, rewritten on a terminal.
void progress(const std::string& text, bool last = false) {
  static const bool tty = isatty(fileno(stdout));
  if (tty) std::printf("\r%-100s%s", text.c_str(), last ? "\n" : "");
  else std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

// ---------------------------------------------------------------------------- corruptions

struct RobustnessFlags {
  std::vector<std::string> corruptions;
  std::vector<int> severities = {1, 2, 3, 4, 5};
  std::string baseline_kind = "standard";
};

int run_robustness(const CommonFlags& f, const RobustnessFlags& r) {
  configure_threads();
  const std::vector<std::string> names = r.corruptions.empty() ? robustness::corruption_names() : r.corruptions;
  const auto known = robustness::corruption_names();
  for (const auto& c : names)
    if (std::find(known.begin(), known.end(), c) == known.end())
      throw CLI::ValidationError("--corruptions", "unknown corruption '" + c + "'");
  for (int s : r.severities)
    if (s < 1 || s > 5) throw CLI::ValidationError("--severities", "severities are 1..5, got " + std::to_string(s));
  TestSet test;
  std::vector<Model> models = load_models(f, test);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<double> clean(models.size());
  for (size_t i = 0; i < models.size(); ++i) clean[i] = accuracy(models[i], test.images, test.labels, f.batch_size);
  // acc[c][s][model]
  std::vector<std::vector<std::vector<double>>> acc(names.size(), std::vector<std::vector<double>>(r.severities.size()));
  const size_t total = names.size() * r.severities.size();
  size_t done = 0;
  for (size_t c = 0; c < names.size(); ++c)
    for (size_t s = 0; s < r.severities.size(); ++s) {
      const torch::Tensor corrupted = robustness::corrupt(test.images, names[c], r.severities[s], f.seed);
      for (const auto& m : models) acc[c][s].push_back(accuracy(m, corrupted, test.labels, f.batch_size));
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ++done;
      progress("corruption " + std::to_string(done) + "/" + std::to_string(total) + "  " + names[c] +
                   " severity " + std::to_string(r.severities[s]) + "  " + std::to_string(int(secs)) + " s  ETA " +
                   std::to_string(int(secs / done * (total - done))) + " s",
               done == total);
    }
  // Corruption error CE_c = sum_s E_cs / sum_s E_cs(baseline), baseline = mean over its checkpoints.
  std::vector<size_t> base;
  for (size_t i = 0; i < models.size(); ++i)
    if (models[i].kind == r.baseline_kind) base.push_back(i);
  std::vector<std::vector<double>> ce(models.size(), std::vector<double>(names.size(), NAN));
  std::vector<double> mce(models.size(), NAN), mean_acc(models.size(), 0);
  for (size_t i = 0; i < models.size(); ++i) {
    double sum_ce = 0;
    for (size_t c = 0; c < names.size(); ++c) {
      double err = 0, base_err = 0;
      for (size_t s = 0; s < r.severities.size(); ++s) {
        err += 1 - acc[c][s][i];
        mean_acc[i] += acc[c][s][i] / (names.size() * r.severities.size());
        for (size_t b : base) base_err += (1 - acc[c][s][b]) / base.size();
      }
      ce[i][c] = base.empty() ? NAN : err / base_err;
      sum_ce += ce[i][c];
    }
    mce[i] = sum_ce / names.size();
  }
  if (base.empty())
    std::printf("note: no '%s' checkpoint among the inputs: CE and mCE are not computed (--baseline-kind)\n",
                r.baseline_kind.c_str());

  const auto kinds = kinds_in_order(models);
  auto of_kind = [&](const std::string& kind, const std::function<double(size_t)>& value) {
    std::vector<double> v;
    for (size_t i = 0; i < models.size(); ++i)
      if (models[i].kind == kind) v.push_back(value(i));
    return v;
  };
  std::printf("\naccuracy %% under corruption (mean over severities %s; mean ± std over checkpoints), %lld test images\n",
              r.severities.size() == 5 ? "1-5" : "given", (long long)test.labels.size(0));
  std::printf("%-18s", "corruption");
  for (const auto& k : kinds) std::printf(" %18s", k.c_str());
  std::printf("\n%-18s", "clean");
  for (const auto& k : kinds) std::printf(" %18s", pm(of_kind(k, [&](size_t i) { return clean[i]; })).c_str());
  std::printf("\n");
  nlohmann::json summary = nlohmann::json::object();
  for (size_t c = 0; c < names.size(); ++c) {
    std::printf("%-18s", names[c].c_str());
    for (const auto& k : kinds) {
      const auto v = of_kind(k, [&](size_t i) {
        double a = 0;
        for (size_t s = 0; s < r.severities.size(); ++s) a += acc[c][s][i] / r.severities.size();
        return a;
      });
      std::printf(" %18s", pm(v).c_str());
      summary[k]["corruption_accuracy"][names[c]] = {{"mean", mean_of(v)}, {"std", std_of(v)}};
    }
    std::printf("\n");
  }
  std::printf("%-18s", "mean corrupted");
  for (const auto& k : kinds) std::printf(" %18s", pm(of_kind(k, [&](size_t i) { return mean_acc[i]; })).c_str());
  std::printf("\n%-18s", ("mCE vs " + r.baseline_kind).c_str());
  for (const auto& k : kinds) std::printf(" %18s", pm(of_kind(k, [&](size_t i) { return mce[i]; })).c_str());
  std::printf("\n");

  fs::create_directories(f.out_dir);
  std::ofstream csv(fs::path(f.out_dir) / "robustness.csv");
  csv << "checkpoint,kind,seed,corruption,severity,accuracy\n";
  nlohmann::json per_model = nlohmann::json::array();
  for (size_t i = 0; i < models.size(); ++i) {
    csv << models[i].checkpoint << "," << models[i].kind << "," << models[i].seed << ",clean,0," << clean[i] << "\n";
    nlohmann::json cj = nlohmann::json::object();
    for (size_t c = 0; c < names.size(); ++c) {
      for (size_t s = 0; s < r.severities.size(); ++s) {
        csv << models[i].checkpoint << "," << models[i].kind << "," << models[i].seed << "," << names[c] << ","
            << r.severities[s] << "," << acc[c][s][i] << "\n";
        cj[names[c]]["accuracy_by_severity"].push_back(acc[c][s][i]);
      }
      cj[names[c]]["ce"] = ce[i][c];
    }
    per_model.push_back({{"checkpoint", models[i].checkpoint}, {"kind", models[i].kind}, {"seed", models[i].seed},
                         {"clean_accuracy", clean[i]}, {"mean_corrupted_accuracy", mean_acc[i]},
                         {"mce", mce[i]}, {"corruptions", cj}});
  }
  for (const auto& k : kinds) {
    const auto cl = of_kind(k, [&](size_t i) { return clean[i]; });
    const auto ma = of_kind(k, [&](size_t i) { return mean_acc[i]; });
    const auto mc = of_kind(k, [&](size_t i) { return mce[i]; });
    summary[k]["clean_accuracy"] = {{"mean", mean_of(cl)}, {"std", std_of(cl)}};
    summary[k]["mean_corrupted_accuracy"] = {{"mean", mean_of(ma)}, {"std", std_of(ma)}};
    summary[k]["mce"] = {{"mean", mean_of(mc)}, {"std", std_of(mc)}};
    summary[k]["checkpoints"] = cl.size();
  }
  nlohmann::json table = nlohmann::json::array();
  for (const auto& spec : robustness::corruption_table())
    table.push_back({{"name", spec.name}, {"family", spec.family}, {"formula", spec.formula},
                     {"severities", spec.severities}});
  std::ofstream(fs::path(f.out_dir) / "robustness.json")
      << nlohmann::json({{"test_images", test.labels.size(0)}, {"seed", f.seed}, {"severities", r.severities},
                         {"baseline_kind", r.baseline_kind}, {"summary", summary}, {"models", per_model},
                         {"corruption_definitions", table}})
             .dump(2)
      << "\n";

  // accuracy vs severity (0 = clean): the mean over corruptions, and one panel per corruption.
  const fs::path data = fs::path(f.out_dir) / "plot_data";
  fs::create_directories(data);
  std::ostringstream gp;
  gp << kGnuplotHeader << "set xlabel 'severity'\nset ylabel 'accuracy'\nset xtics 1\n";
  auto write_curve = [&](const std::string& kind, int c /* -1: mean */) {
    const fs::path file = data / (kind + "_" + (c < 0 ? std::string("mean") : names[c]) + ".dat");
    std::ofstream out(file);
    out << "0 " << mean_of(of_kind(kind, [&](size_t i) { return clean[i]; })) << "\n";
    for (size_t s = 0; s < r.severities.size(); ++s) {
      const auto v = of_kind(kind, [&](size_t i) {
        if (c >= 0) return acc[c][s][i];
        double a = 0;
        for (size_t cc = 0; cc < names.size(); ++cc) a += acc[cc][s][i] / names.size();
        return a;
      });
      out << r.severities[s] << " " << mean_of(v) << " " << std_of(v) << "\n";
    }
    return file;
  };
  auto curves = [&](int c) {
    std::string s = "plot ";
    for (size_t k = 0; k < kinds.size(); ++k)
      s += (k ? ", " : "") + gnuplot_quote(write_curve(kinds[k], c).string()) + " using 1:2 with linespoints title " +
           gnuplot_quote(kinds[k]);
    return s + "\n";
  };
  gp << "set output " << gnuplot_quote((fs::path(f.out_dir) / "accuracy_vs_severity.png").string()) << "\n"
     << "set title 'mean accuracy over " << names.size() << " corruptions (mean over checkpoints)'\n" << curves(-1);
  const size_t cols = std::min<size_t>(names.size(), 4), rows = (names.size() + cols - 1) / cols;
  gp << "set output " << gnuplot_quote((fs::path(f.out_dir) / "accuracy_by_corruption.png").string()) << "\n"
     << "set terminal pngcairo size 1600," << 300 * rows << " font ',9' noenhanced\nset key inside bottom left\n"
     << "set multiplot layout " << rows << "," << cols << "\n";
  for (size_t c = 0; c < names.size(); ++c) gp << "set title " << gnuplot_quote(names[c]) << "\n" << curves(int(c));
  gp << "unset multiplot\n";
  run_gnuplot(data / "robustness.gp", gp.str());
  std::printf("results: %s/robustness.{json,csv}, accuracy_vs_severity.png, accuracy_by_corruption.png\n",
              f.out_dir.c_str());
  return 0;
}

// ---------------------------------------------------------------------------- attacks

struct AttackFlags {
  std::vector<std::string> attacks = {"fgsm", "pgd_linf", "pgd_l2"};
  std::vector<double> eps = {0, 1.0 / 255, 2.0 / 255, 4.0 / 255, 8.0 / 255, 0.1, 0.2};
  std::vector<double> l2_eps = {0, 0.1, 0.2, 0.5, 1.0, 2.0};
  int64_t steps = 10;
  double step_ratio = 0.25;
};

int run_attack(const CommonFlags& f, const AttackFlags& a) {
  configure_threads();
  std::vector<AttackKind> attacks;
  for (const auto& name : a.attacks) {
    const auto k = robustness::parse_attack(name);
    if (!k) throw CLI::ValidationError("--attacks", "unknown attack '" + name + "' (fgsm, pgd_linf, pgd_l2)");
    attacks.push_back(*k);
  }
  for (double e : a.eps)
    if (!(e >= 0)) throw CLI::ValidationError("--eps", "radii must be >= 0");
  for (double e : a.l2_eps)
    if (!(e >= 0)) throw CLI::ValidationError("--l2-eps", "radii must be >= 0");
  TestSet test;
  std::vector<Model> models = load_models(f, test);
  const int64_t n = test.labels.size(0);
  // acc[model][attack][eps index]
  std::vector<std::vector<std::vector<double>>> acc(models.size(), std::vector<std::vector<double>>(attacks.size()));
  std::vector<double> clean(models.size());
  std::vector<std::string> warnings;
  const auto t0 = std::chrono::steady_clock::now();
  int64_t units = 0, done = 0;  // progress in (image x gradient step)
  for (AttackKind k : attacks)
    for (double e : (k == AttackKind::pgd_l2 ? a.l2_eps : a.eps))
      units += e == 0 ? 0 : (k == AttackKind::fgsm ? 1 : a.steps) * n;
  units *= models.size();
  for (size_t i = 0; i < models.size(); ++i) {
    clean[i] = accuracy(models[i], test.images, test.labels, f.batch_size);
    for (size_t t = 0; t < attacks.size(); ++t) {
      const AttackKind kind = attacks[t];
      const auto& radii = kind == AttackKind::pgd_l2 ? a.l2_eps : a.eps;
      for (double eps : radii) {
        robustness::AttackOptions o;
        o.kind = kind;
        o.eps = eps;
        o.steps = a.steps;
        o.step_ratio = a.step_ratio;
        auto gen = at::make_generator<at::CPUGeneratorImpl>(f.seed);
        int64_t correct = 0;
        double worst = 0;
        for (int64_t b = 0; b < n; b += f.batch_size) {
          const int64_t m = std::min(f.batch_size, n - b);
          const torch::Tensor x = test.images.narrow(0, b, m), y = test.labels.narrow(0, b, m);
          const torch::Tensor adv = robustness::attack(models[i].classify, x, y, o, gen);
          // Built-in checks: inside the ball and inside [0, 1].
          worst = std::max(worst, robustness::max_perturbation(kind, adv, x));
          TORCH_CHECK(adv.min().item<float>() >= 0 && adv.max().item<float>() <= 1,
                      "attack ", to_string(kind), " produced pixels outside [0, 1]");
          torch::NoGradGuard no_grad;
          correct += models[i].classify(adv).argmax(1).eq(y).sum().item<int64_t>();
          done += eps == 0 ? 0 : (kind == AttackKind::fgsm ? 1 : a.steps) * m;
          const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          char line[200];
          std::snprintf(line, sizeof line, "%s [%zu/%zu] %s eps %.4f  %lld/%lld images  %.0f s  ETA %.0f s",
                        models[i].kind.c_str(), i + 1, models.size(), to_string(kind).c_str(), eps,
                        (long long)(b + m), (long long)n, secs,
                        done > 0 ? secs / done * (units - done) : 0.0);
          progress(line);
        }
        TORCH_CHECK(worst <= eps * (1 + 1e-5) + 1e-6, "attack ", to_string(kind), " left its eps-ball: ",
                    worst, " > ", eps);
        acc[i][t].push_back(static_cast<double>(correct) / n);
        if (eps == 0 && std::abs(acc[i][t].back() - clean[i]) > 1e-12)
          warnings.push_back(models[i].checkpoint + ": " + to_string(kind) + " at eps 0 gives " +
                             std::to_string(acc[i][t].back()) + ", clean accuracy is " + std::to_string(clean[i]));
      }
      const auto& v = acc[i][t];
      for (size_t e = 1; e < v.size(); ++e)
        if (kind != AttackKind::fgsm && radii[e] > radii[e - 1] && v[e] > v[e - 1])
          warnings.push_back(models[i].checkpoint + ": " + to_string(kind) + " accuracy rises from eps " +
                             std::to_string(radii[e - 1]) + " to " + std::to_string(radii[e]) + " (" +
                             std::to_string(v[e - 1]) + " -> " + std::to_string(v[e]) + ")");
    }
  }
  progress("done", true);

  const auto kinds = kinds_in_order(models);
  std::printf("\nper checkpoint: accuracy %% (%lld test images, %lld PGD steps, step %.2f eps)\n", (long long)n,
              (long long)a.steps, a.step_ratio);
  for (size_t i = 0; i < models.size(); ++i) {
    std::printf("%s (%s, seed %llu): clean %.2f\n", models[i].checkpoint.c_str(), models[i].kind.c_str(),
                (unsigned long long)models[i].seed, 100 * clean[i]);
    for (size_t t = 0; t < attacks.size(); ++t) {
      const auto& radii = attacks[t] == AttackKind::pgd_l2 ? a.l2_eps : a.eps;
      std::printf("  %-9s", to_string(attacks[t]).c_str());
      for (size_t e = 0; e < radii.size(); ++e) std::printf("  eps %.4f: %5.2f", radii[e], 100 * acc[i][t][e]);
      std::printf("\n");
    }
  }
  std::printf("\nper kind: accuracy %% mean ± std over checkpoints\n%-10s %-8s", "attack", "eps");
  for (const auto& k : kinds) std::printf(" %16s", k.c_str());
  std::printf("\n");
  fs::create_directories(f.out_dir);
  std::ofstream csv(fs::path(f.out_dir) / "attack.csv");
  csv << "checkpoint,kind,seed,attack,eps,accuracy\n";
  nlohmann::json summary = nlohmann::json::array();
  const fs::path data = fs::path(f.out_dir) / "plot_data";
  fs::create_directories(data);
  std::ostringstream gp;
  gp << kGnuplotHeader << "set output " << gnuplot_quote((fs::path(f.out_dir) / "accuracy_vs_eps.png").string())
     << "\nset multiplot layout 1," << attacks.size() << "\nset ylabel 'accuracy'\nset key inside top right\n";
  for (size_t t = 0; t < attacks.size(); ++t) {
    const auto& radii = attacks[t] == AttackKind::pgd_l2 ? a.l2_eps : a.eps;
    std::map<std::string, std::ofstream> dat;
    for (size_t e = 0; e < radii.size(); ++e) {
      std::printf("%-10s %-8.4f", to_string(attacks[t]).c_str(), radii[e]);
      for (const auto& k : kinds) {
        std::vector<double> v;
        for (size_t i = 0; i < models.size(); ++i)
          if (models[i].kind == k) v.push_back(acc[i][t][e]);
        std::printf(" %16s", pm(v).c_str());
        summary.push_back({{"attack", to_string(attacks[t])}, {"eps", radii[e]}, {"kind", k},
                           {"accuracy_mean", mean_of(v)}, {"accuracy_std", std_of(v)}, {"checkpoints", v.size()}});
        if (!dat.count(k)) dat[k].open(data / (to_string(attacks[t]) + "_" + k + ".dat"));
        dat[k] << radii[e] << " " << mean_of(v) << " " << std_of(v) << "\n";
      }
      std::printf("\n");
    }
    gp << "set xlabel 'eps (" << (attacks[t] == AttackKind::pgd_l2 ? "L2" : "L-inf") << ")'\nset title "
       << gnuplot_quote(to_string(attacks[t])) << "\nplot ";
    for (size_t k = 0; k < kinds.size(); ++k)
      gp << (k ? ", " : "")
         << gnuplot_quote((data / (to_string(attacks[t]) + "_" + kinds[k] + ".dat")).string())
         << " using 1:2 with linespoints title " << gnuplot_quote(kinds[k]);
    gp << "\n";
  }
  gp << "unset multiplot\n";
  nlohmann::json per_model = nlohmann::json::array();
  for (size_t i = 0; i < models.size(); ++i) {
    nlohmann::json aj = nlohmann::json::object();
    for (size_t t = 0; t < attacks.size(); ++t) {
      const auto& radii = attacks[t] == AttackKind::pgd_l2 ? a.l2_eps : a.eps;
      for (size_t e = 0; e < radii.size(); ++e) {
        csv << models[i].checkpoint << "," << models[i].kind << "," << models[i].seed << ","
            << to_string(attacks[t]) << "," << radii[e] << "," << acc[i][t][e] << "\n";
        aj[to_string(attacks[t])].push_back({{"eps", radii[e]}, {"accuracy", acc[i][t][e]}});
      }
    }
    per_model.push_back({{"checkpoint", models[i].checkpoint}, {"kind", models[i].kind}, {"seed", models[i].seed},
                         {"clean_accuracy", clean[i]}, {"attacks", aj}});
  }
  std::ofstream(fs::path(f.out_dir) / "attack.json")
      << nlohmann::json({{"test_images", n}, {"steps", a.steps}, {"step_ratio", a.step_ratio}, {"seed", f.seed},
                         {"summary", summary}, {"models", per_model}, {"warnings", warnings}})
             .dump(2)
      << "\n";
  run_gnuplot(data / "attack.gp", gp.str());
  for (const auto& w : warnings) std::printf("sanity check: %s\n", w.c_str());
  std::printf("sanity checks: every adversarial image inside its ball and in [0, 1]; eps 0 = clean: %s; "
              "PGD non-increasing in eps: %s\n",
              std::none_of(warnings.begin(), warnings.end(), [](const std::string& w) { return w.find("eps 0") != std::string::npos; }) ? "yes" : "NO",
              std::none_of(warnings.begin(), warnings.end(), [](const std::string& w) { return w.find("rises") != std::string::npos; }) ? "yes" : "NO");
  std::printf("results: %s/attack.{json,csv}, accuracy_vs_eps.png\n", f.out_dir.c_str());
  return 0;
}

void add_common(CLI::App* cmd, CommonFlags& f, int64_t default_limit, const char* default_out) {
  cmd->add_option("checkpoints", f.checkpoints, "checkpoint.pt files (each with its run's config.json beside it)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--data-dir", f.data_dir, "MNIST-format directory (its t10k split is evaluated)")->capture_default_str();
  f.limit = default_limit;
  cmd->add_option("--limit", f.limit, "Evaluate the first N test images (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--batch-size", f.batch_size)->check(CLI::Range(int64_t{1}, int64_t{1} << 30))->capture_default_str();
  cmd->add_option("--seed", f.seed, "Seed of the random corruptions / attack starts")->capture_default_str();
  f.out_dir = default_out;
  cmd->add_option("--out-dir", f.out_dir, "Where JSON, CSV and PNG go")->capture_default_str();
}

}  // namespace

void add_robustness(CLI::App& app, int& exit_code) {
  auto f = std::make_shared<CommonFlags>();
  auto r = std::make_shared<RobustnessFlags>();
  CLI::App* cmd = app.add_subcommand(
      "robustness", "Accuracy under common corruptions x severities; CE and mCE against a baseline kind");
  add_common(cmd, *f, 0, "runs/robustness");
  cmd->add_option("--corruptions", r->corruptions, "Subset of corruptions (default: all; see README)")->delimiter(',');
  cmd->add_option("--severities", r->severities)->delimiter(',')->capture_default_str();
  cmd->add_option("--baseline-kind", r->baseline_kind,
                  "Attention kind whose checkpoints (mean error) normalise CE and mCE")
      ->capture_default_str();
  cmd->callback([f, r, &exit_code] { exit_code = run_robustness(*f, *r); });

  auto fa = std::make_shared<CommonFlags>();
  auto a = std::make_shared<AttackFlags>();
  CLI::App* atk = app.add_subcommand("attack", "Accuracy under FGSM, PGD-Linf and PGD-L2 for each checkpoint");
  add_common(atk, *fa, 1000, "runs/attack");
  atk->add_option("--attacks", a->attacks, "fgsm, pgd_linf, pgd_l2")->delimiter(',')->capture_default_str();
  atk->add_option("--eps", a->eps, "L-inf radii for fgsm and pgd_linf (pixels in [0, 1])")
      ->delimiter(',')
      ->capture_default_str();
  atk->add_option("--l2-eps", a->l2_eps, "L2 radii for pgd_l2")->delimiter(',')->capture_default_str();
  atk->add_option("--steps", a->steps, "PGD iterations")->check(CLI::Range(int64_t{1}, int64_t{1} << 20))->capture_default_str();
  atk->add_option("--step-ratio", a->step_ratio, "PGD step size as a fraction of eps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  atk->callback([fa, a, &exit_code] { exit_code = run_attack(*fa, *a); });
}

}  // namespace quest::cli
