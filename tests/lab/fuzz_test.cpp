// Seeded mutation fuzzing of what quest reads from disk: IDX files (plain and gzipped), training
// configs, checkpoints. Every mutant must be read or rejected with an exception — never crash,
// hang or allocate without bound. Bounded in time for CI; QUEST_FUZZ_ITERATIONS runs longer.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "quest/lab/data/idx.h"
#include "quest/lab/training/engine.h"
#include "quest/lab/tasks/vit.h"
#include "quest/torch/nn/init.h"

namespace quest {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<unsigned char>;

int iterations(int default_count) {
  const char* env = std::getenv("QUEST_FUZZ_ITERATIONS");
  return env ? std::atoi(env) : default_count;
}

// One random edit: flip bytes, overwrite a 4-byte field with an extreme value, cut, or append.
Bytes mutate(Bytes b, std::mt19937_64& rng) {
  auto pick = [&](size_t n) { return n ? static_cast<size_t>(rng() % n) : 0; };
  switch (rng() % 5) {
    case 0:
      for (int i = 0, n = 1 + pick(4); i < n && !b.empty(); ++i) b[pick(b.size())] ^= static_cast<unsigned char>(1 + pick(255));
      break;
    case 1:
      if (b.size() >= 4) {
        const size_t at = pick(b.size() / 4) * 4;
        const uint32_t values[] = {0, 1, 0x7fffffff, 0xffffffff, 4096, 4097, 100000000};
        const uint32_t v = values[pick(7)];
        for (int k = 0; k < 4; ++k) b[at + k] = static_cast<unsigned char>(v >> (24 - 8 * k));
      }
      break;
    case 2: b.resize(pick(b.size() + 1)); break;
    case 3:
      for (int i = 0, n = 1 + pick(64); i < n; ++i) b.push_back(static_cast<unsigned char>(rng()));
      break;
    default:
      if (!b.empty()) b.erase(b.begin() + pick(b.size()));
  }
  return b;
}

struct TempDir {
  TempDir() : path(fs::temp_directory_path() / ("quest_fuzz_" + std::to_string(::getpid()))) {
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  fs::path path;
};

void write(const fs::path& p, const Bytes& b, bool gzip) {
  if (gzip) {
    gzFile f = gzopen(p.c_str(), "wb");
    gzwrite(f, b.data(), static_cast<unsigned>(b.size()));
    gzclose(f);
  } else {
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
  }
}

Bytes read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

Bytes be32(std::initializer_list<uint32_t> values) {
  Bytes b;
  for (uint32_t v : values)
    for (int k = 0; k < 4; ++k) b.push_back(static_cast<unsigned char>(v >> (24 - 8 * k)));
  return b;
}

TEST(Fuzz, IdxReaderReadsOrRejectsEveryMutant) {
  TempDir t;
  Bytes images = be32({0x803, 3, 4, 5}), labels = be32({0x801, 3});
  for (int i = 0; i < 60; ++i) images.push_back(static_cast<unsigned char>(i * 7));
  for (unsigned char l : {1, 9, 0}) labels.push_back(l);
  std::mt19937_64 rng(2026);
  int read = 0, rejected = 0;
  for (int i = 0, n = iterations(1500); i < n; ++i) {
    const bool gzip = i % 2, of_images = (i / 2) % 2;
    // Mutate the uncompressed bytes, or (for gzip) sometimes the compressed stream itself.
    const fs::path p = t.path / (gzip ? "f.gz" : "f");
    write(p, mutate(of_images ? images : labels, rng), gzip);
    if (gzip && i % 3 == 0) write(p, mutate(read_bytes(p), rng), false);
    try {
      const torch::Tensor x = of_images ? data::read_idx_images(p.string()) : data::read_idx_labels(p.string());
      EXPECT_EQ(x.dim(), of_images ? 3 : 1);
      ++read;
    } catch (const std::exception&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(read, 0);  // some mutants are still valid files (e.g. a changed pixel)
}

TEST(Fuzz, ConfigParserAcceptsOrNamesTheProblem) {
  const std::string base = training::to_json(training::VitConfig{}).dump();
  std::mt19937_64 rng(7);
  int accepted = 0, rejected = 0;
  for (int i = 0, n = iterations(3000); i < n; ++i) {
    const Bytes m = mutate(Bytes(base.begin(), base.end()), rng);
    const std::string text(m.begin(), m.end());
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception&) {
      continue;  // not JSON: the CLI reports the parser's message with the file name
    }
    try {
      const training::VitConfig c = training::vit_config_from_json(j);
      EXPECT_EQ(training::to_json(training::vit_config_from_json(training::to_json(c))), training::to_json(c));
      ++accepted;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what_without_backtrace()).find("quest::"), std::string::npos) << text;
      ++rejected;
    }
  }
  EXPECT_GT(accepted, 0);
  EXPECT_GT(rejected, 0);
}

// A model small enough that a checkpoint is a few kB.
class TinyTask : public training::Task {
 public:
  torch::nn::Module& model() override { return *net; }
  void initialize(at::Generator g) override { nn::reset_parameters(*net, g); }
  int64_t steps_per_epoch() const override { return 2; }
  void begin_epoch(int64_t, at::Generator) override {}
  training::StepOutput forward_step(int64_t) override {
    return {net->forward(torch::ones({4, 3})).pow(2).mean(), 4, -1};
  }
  torch::nn::Sequential net{torch::nn::Linear(3, 4), torch::nn::Linear(4, 2)};
};

TEST(Fuzz, CheckpointLoaderLoadsOrRejectsEveryMutantWhole) {
  TempDir t;
  TinyTask source;
  training::EngineConfig c;
  training::Engine engine(c, source);
  engine.fit(false);
  const fs::path good = t.path / "good.pt";
  engine.save_checkpoint(good.string());
  const Bytes bytes = read_bytes(good);
  std::mt19937_64 rng(11);
  int rejected = 0;
  for (int i = 0, n = iterations(300); i < n; ++i) {
    TinyTask target;
    training::Engine loader(c, target);
    std::vector<torch::Tensor> before;
    for (const auto& p : target.net->parameters()) before.push_back(p.detach().clone());
    const fs::path p = t.path / "mutant.pt";
    write(p, mutate(bytes, rng), false);
    try {
      loader.load_checkpoint(p.string());
    } catch (const std::runtime_error& e) {
      ++rejected;
      EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos) << e.what();
      size_t k = 0;  // rejected: nothing half-loaded
      for (const auto& q : target.net->parameters()) EXPECT_TRUE(torch::equal(q, before[k++]));
    }
  }
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace quest
