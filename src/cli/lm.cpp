// quest lm train | eval | generate: flags -> training::LmTrainer / models::generate -> print.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>

#include "commands.h"
#include "progress.h"
#include "quest/lab/training/lm.h"
#include "quest/torch/runtime.h"

namespace quest::cli {

namespace {

struct LmTrainFlags {
  std::string config, run_dir = "runs/lm", attention;
  bool resume = false;
  int64_t epochs = 0;
  int64_t seed = -1;
};

void print_eval(const char* what, const training::LmEval& e) {
  std::printf("%s: %.4f bits per byte (%.4f nats), next-byte accuracy %.4f over %lld bytes\n", what,
              e.bits_per_byte, e.nats_per_byte, e.accuracy, (long long)e.bytes);
}

int run_lm_train(const LmTrainFlags& f) {
  warn_if_slow_blas();
  configure_threads();
  nlohmann::json j = nlohmann::json::object();
  if (!f.config.empty()) {
    std::ifstream in(f.config);
    if (!in) throw std::runtime_error("cannot open config '" + f.config + "'");
    j = nlohmann::json::parse(in);
  }
  training::LmConfig c = training::lm_config_from_json(j);
  c.run_dir = f.run_dir;
  if (!f.attention.empty()) {
    const auto kind = parse_kind(f.attention);
    if (!kind) throw std::invalid_argument("--attention: unknown kind '" + f.attention + "'");
    c.model.attention(*kind);
  }
  if (f.epochs > 0) c.epochs = f.epochs;
  if (f.seed >= 0) c.seed = static_cast<uint64_t>(f.seed);
  const data::ByteSplits data = training::load_lm_data(c);
  std::printf("corpus %s: train %lld / valid %lld / test %lld bytes; attention %s, %s positions; "
              "run dir %s\n",
              c.corpus.c_str(), (long long)data.train.numel(), (long long)data.valid.numel(),
              (long long)data.test.numel(), to_string(c.model.attention()).c_str(),
              c.model.positions().c_str(), c.run_dir.c_str());
  training::LmTrainer trainer(c);
  StepProgress progress(c.batch_size * c.model.context(), c.log_every, "tok");
  trainer.fit(data, f.resume, [&](const nlohmann::json& line) { progress.update(line); });
  progress.finish();
  print_eval("valid (first eval_bytes)", trainer.evaluate(data.valid, c.eval_bytes));
  print_eval("test", trainer.evaluate(data.test));
  std::printf("training: %.1f s, %.0f tokens/s\n", trainer.train_seconds(),
              trainer.step() * c.batch_size * c.model.context() / trainer.train_seconds());
  return 0;
}

int run_lm_eval(const std::string& checkpoint, const std::string& split, int64_t bytes) {
  configure_threads();
  const auto trainer = training::load_lm_run(checkpoint);
  const data::ByteSplits data = training::load_lm_data(trainer->config());
  if (split != "valid" && split != "test") throw std::invalid_argument("--split: valid or test");
  print_eval(split.c_str(), trainer->evaluate(split == "valid" ? data.valid : data.test, bytes));
  return 0;
}

int run_lm_generate(const std::string& checkpoint, const std::string& prompt,
                    const models::SamplingOptions& o, uint64_t seed) {
  configure_threads();
  const auto trainer = training::load_lm_run(checkpoint);
  if (prompt.empty()) throw std::invalid_argument("--prompt must not be empty");
  torch::Tensor p = torch::empty({1, static_cast<int64_t>(prompt.size())}, torch::kLong);
  for (size_t i = 0; i < prompt.size(); ++i) p[0][i] = static_cast<int64_t>(static_cast<unsigned char>(prompt[i]));
  const auto start = std::chrono::steady_clock::now();
  const torch::Tensor out =
      models::generate(trainer->model(), p, o, at::detail::createCPUGenerator(seed));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "%lld bytes in %.2f s: %.1f tokens/s (KV cache %s, context %lld)\n",
               (long long)out.size(1), seconds, out.size(1) / std::max(seconds, 1e-9),
               o.use_cache ? "on" : "off", (long long)trainer->config().model.context());
  std::string text = prompt;
  for (int64_t i = 0; i < out.size(1); ++i) {
    const int64_t b = out[0][i].item<int64_t>();
    if (b == data::kDocumentEnd) break;  // the model ended the document
    text.push_back(static_cast<char>(b));
  }
  std::printf("%s\n", text.c_str());
  return 0;
}

}  // namespace

void add_lm(CLI::App& app, int& exit_code) {
  CLI::App* lm = app.add_subcommand("lm", "Byte-level language modelling (GPT on linux-doc-6.1's text)");
  lm->require_subcommand(1);

  auto f = std::make_shared<LmTrainFlags>();
  CLI::App* train = lm->add_subcommand("train", "Train a byte-level GPT; valid/test bits per byte");
  train->add_option("--config", f->config, "JSON config (keys of LmConfig; configs/lm-quick.json)");
  train->add_option("--run-dir", f->run_dir, "Where metrics, checkpoints and config go")->capture_default_str();
  train->add_option("--attention", f->attention, "standard, quest, qnorm, qknorm or qk_layernorm");
  train->add_option("--epochs", f->epochs, "Override the config's epochs");
  train->add_option("--seed", f->seed, "Override the config's seed");
  train->add_flag("--resume", f->resume, "Continue from the run directory's checkpoint");
  train->callback([f, &exit_code] { exit_code = run_lm_train(*f); });

  auto checkpoint = std::make_shared<std::string>();
  auto split = std::make_shared<std::string>("test");
  auto bytes = std::make_shared<int64_t>(0);
  CLI::App* eval = lm->add_subcommand("eval", "Bits per byte of a checkpoint on the valid or test split");
  eval->add_option("checkpoint", *checkpoint, "Path to checkpoint.pt (config.json beside it)")->required();
  eval->add_option("--split", *split, "valid or test")->capture_default_str();
  eval->add_option("--bytes", *bytes, "Evaluate the first N bytes only (0: all)")->capture_default_str();
  eval->callback([checkpoint, split, bytes, &exit_code] {
    exit_code = run_lm_eval(*checkpoint, *split, *bytes);
  });

  auto gen_checkpoint = std::make_shared<std::string>();
  auto prompt = std::make_shared<std::string>();
  auto sampling = std::make_shared<models::SamplingOptions>();
  auto seed = std::make_shared<uint64_t>(0);
  CLI::App* generate = lm->add_subcommand("generate", "Continue a prompt (KV-cache decoding)");
  generate->add_option("--checkpoint", *gen_checkpoint, "Path to checkpoint.pt")->required();
  generate->add_option("--prompt", *prompt, "Text to continue")->required();
  generate->add_option("--tokens", sampling->tokens, "Bytes to generate")->capture_default_str();
  generate->add_option("--temperature", sampling->temperature, "0: greedy")->capture_default_str();
  generate->add_option("--top-k", sampling->top_k, "Sample among the k most likely (0: all)")->capture_default_str();
  generate->add_option("--seed", *seed, "Sampling seed")->capture_default_str();
  generate->add_flag("--no-cache{false}", sampling->use_cache,
                     "Recompute the window for every token (the baseline the cache is timed against)");
  generate->callback([gen_checkpoint, prompt, sampling, seed, &exit_code] {
    exit_code = run_lm_generate(*gen_checkpoint, *prompt, *sampling, *seed);
  });
}

}  // namespace quest::cli
