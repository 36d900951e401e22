// quest lm train | compare | eval | generate: flags -> the LM's config -> train_one / compare_kinds
// (train_flags.h), or a checkpoint -> training::LmTrainer / models::generate -> print.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "commands.h"
#include "quest/lab/tasks/lm.h"
#include "quest/torch/runtime.h"
#include "train_flags.h"

namespace quest::cli {

namespace fs = std::filesystem;

namespace {

struct LmTrainFlags {
  std::unique_ptr<ConfigFlags> config;  // --config and the flags over LmConfig's keys
  bool resume = false, no_test = false;
};

constexpr const char* kDefaultLmRunDir = "runs/lm";

void print_eval(const char* what, const training::LmEval& e) {
  std::printf("%s: %.4f bits per byte (%.4f nats), next-byte accuracy %.4f over %lld bytes\n", what,
              e.bits_per_byte, e.nats_per_byte, e.accuracy, (long long)e.bytes);
}

// The LM's flags over the config file: the shared run settings, the attention kind, the corpus.
std::unique_ptr<ConfigFlags> add_lm_config_flags(CLI::App* cmd, const std::string& help) {
  auto c = std::make_unique<ConfigFlags>(cmd, help);
  add_run_settings_flags(*c);
  c->add<int64_t>("--steps-per-epoch", "steps_per_epoch")->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  c->add<std::string>("--corpus", "corpus", "Directory of text files (default: the kernel documentation)");
  return c;
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

void add_lm(CLI::App& app) {
  CLI::App* lm = app.add_subcommand("lm", "Byte-level language modelling (GPT on the Linux kernel documentation's text)");
  lm->require_subcommand(1);

  auto f = std::make_shared<LmTrainFlags>();
  CLI::App* train = lm->add_subcommand("train", "Train a byte-level GPT; valid/test bits per byte");
  f->config = add_lm_config_flags(train, "JSON config (keys of LmConfig; configs/lm-quick.json); flags override it");
  f->config->add<std::string>("--run-dir", "run_dir",
                              std::string("Where metrics, checkpoints and config go (else the config's, else ") +
                                  kDefaultLmRunDir + ")");
  f->config->add<std::string>("--attention", "model.attention", "standard, quest, qnorm, qknorm or qk_layernorm");
  f->config->add<std::string>("--backend", "model.backend", "automatic, fused, composite, reference or sdpa");
  f->config->add<uint64_t>("--seed", "seed");
  train->add_flag("--resume", f->resume, "Continue from the run directory's checkpoint");
  train->add_flag("--no-test", f->no_test, "Skip the valid/test evaluation and result.json (sweeps score validation)");
  auto parallel = std::make_shared<ParallelFlags>();
  add_parallel_flags(train, parallel);
  train->callback([f, parallel] {
    const nlohmann::json config = resolve_task_config(*f->config, tasks::task_kind("lm"), kDefaultLmRunDir);
    exit_with(train_one(config, f->resume, f->no_test, *parallel));
  });

  auto compare = std::make_shared<CompareFlags>();
  compare->kinds = {"standard", "quest", "qnorm", "qknorm", "qk_layernorm"};
  compare->out_dir = "runs/lm-compare";
  auto compare_resume = std::make_shared<bool>(false);
  CLI::App* cmp = lm->add_subcommand(
      "compare", "Train every requested attention kind on the same seeds; table of test bits per byte");
  std::shared_ptr<ConfigFlags> compare_config =
      add_lm_config_flags(cmp, "JSON config (keys of LmConfig; configs/lm.json); flags override it");
  cmp->add_flag("--resume", *compare_resume,
                "Continue each run from its checkpoint; finished runs are only evaluated");
  add_compare_flags(cmp, compare);
  cmp->callback([compare, compare_config, compare_resume] {
    compare_kinds("quest lm compare", resolve_task_config(*compare_config, tasks::task_kind("lm")), *compare_resume,
                  *compare);
  });

  auto checkpoint = std::make_shared<std::string>();
  auto split = std::make_shared<std::string>("test");
  auto bytes = std::make_shared<int64_t>(0);
  CLI::App* eval = lm->add_subcommand("eval", "Bits per byte of a checkpoint on the valid or test split");
  eval->add_option("checkpoint", *checkpoint, "Path to checkpoint.pt (config.json beside it)")->required();
  eval->add_option("--split", *split, "valid or test")->capture_default_str();
  eval->add_option("--bytes", *bytes, "Evaluate the first N bytes only (0: all)")->capture_default_str();
  eval->callback([checkpoint, split, bytes] {
    exit_with(run_lm_eval(*checkpoint, *split, *bytes));
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
  generate->callback([gen_checkpoint, prompt, sampling, seed] {
    exit_with(run_lm_generate(*gen_checkpoint, *prompt, *sampling, *seed));
  });
}

}  // namespace quest::cli
