// Data-parallel training on c10d / Gloo, on localhost: sharding, equivalence with one process,
// failures (a killed rank, a bad rendezvous) and resume. The ranks are this test binary itself,
// re-executed by distributed::launch with a filter that selects DataParallelRank.Train.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "fixtures.h"
#include "quest/lab/distributed/launch.h"
#include "quest/lab/distributed/process_group.h"
#include "quest/lab/runs/compare.h"
#include "quest/lab/tasks/lm.h"
#include "quest/lab/tasks/vit.h"

namespace quest {
namespace {

namespace fs = std::filesystem;
using training::Dataset;
using training::VitConfig;
using training::VitTrainer;

Dataset synthetic(int64_t n, uint64_t seed) { return testing::synthetic_images(n, seed); }

// 330 training images in global batches of 32: 10 full steps and one of 10 per epoch, 3 epochs
// (33 steps); augmentation on, so the ranks must split the whole batch's random draws.
VitConfig config(const std::string& run_dir) {
  VitConfig c;
  c.model.image_size(8).patch_size(4).num_classes(2).dim(16).depth(2).heads(2).attention(Kind::quest);
  c.epochs = 3;
  c.batch_size = 32;
  c.lr = 3e-3;
  c.warmup_epochs = 0.5;
  c.log_every = 1;
  c.crop_padding = 1;
  c.run_dir = run_dir;
  return c;
}

// The language model on a synthetic byte stream: 24 steps of 6 windows (3 per rank with 2 ranks,
// 2 with 3), validation over 2 000 bytes (sharded windows plus a tail).
training::LmConfig lm_config(const std::string& run_dir) {
  training::LmConfig c;
  c.model.context(16).dim(16).depth(1).heads(2).attention(Kind::quest);
  c.epochs = 2;
  c.steps_per_epoch = 12;
  c.batch_size = 6;
  c.lr = 3e-3;
  c.warmup_epochs = 0.5;
  c.eval_bytes = 2000;
  c.log_every = 1;
  c.run_dir = run_dir;
  return c;
}

data::ByteSplits lm_data() {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  // A learnable stream: a seeded walk over 32 byte values.
  auto stream = [&](int64_t n) { return (torch::randint(0, 3, {n}, gen).cumsum(0) % 32 + 65).to(torch::kUInt8); };
  return {stream(20000), stream(2100), stream(2100)};
}

struct TempDir : testing::TempDir {
  TempDir() : testing::TempDir("quest_dp_test") {}
};

// Every `key` of the run's metrics lines of `type` ("step": losses, "epoch": validation losses).
std::vector<double> metric_values(const fs::path& run_dir, const std::string& type, const std::string& key) {
  std::vector<double> values;
  for (const auto& line : runs::RunDir(run_dir).read_metrics(type)) values.push_back(line.at(key));
  return values;
}
std::vector<double> step_losses(const fs::path& run_dir) { return metric_values(run_dir, "step", "loss"); }
std::vector<double> val_losses(const fs::path& run_dir) { return metric_values(run_dir, "epoch", "val_loss"); }

// One rank: trains config(QUEST_TEST_DP_RUN_DIR) with QUEST_TEST_DP_EPOCHS epochs, resuming (the
// language model's lm_config where QUEST_TEST_DP_TASK=lm).
TEST(DataParallelRank, Train) {
  const char* dir = std::getenv("QUEST_TEST_DP_RUN_DIR");
  if (!dir) GTEST_SKIP() << "a rank of the DataParallel tests (they start it)";
  torch::set_num_threads(1);
  training::DataParallel parallel;
  parallel.group = std::make_shared<distributed::ProcessGroup>(*distributed::rendezvous_from_env());
  parallel.check_sync_every = 1;
  try {
    if (std::string(std::getenv("QUEST_TEST_DP_TASK")) == "lm") {
      training::LmConfig c = lm_config(dir);
      c.epochs = std::atoi(std::getenv("QUEST_TEST_DP_EPOCHS"));
      training::LmTrainer trainer(c, parallel);
      trainer.fit(lm_data(), /*resume=*/true);
    } else {
      VitConfig c = config(dir);
      c.epochs = std::atoi(std::getenv("QUEST_TEST_DP_EPOCHS"));
      VitTrainer trainer(c, parallel);
      trainer.fit(synthetic(330, 1), synthetic(50, 2), /*resume=*/true);
    }
  } catch (const std::exception& e) {  // what train_run would record, for the parent to read
    if (parallel.group->rank() == 0) runs::RunDir(dir).write_outcome({runs::RunStatus::failed, e.what()});
    throw;
  }
}

struct Launched {
  int exit_code;
  double seconds;
};

Launched launch_ranks(const fs::path& run_dir, int ranks, int epochs, const std::string& fault = "",
                      int timeout_seconds = 30, const std::string& task = "vit") {
  setenv("QUEST_TEST_DP_TASK", task.c_str(), 1);
  setenv("QUEST_TEST_DP_RUN_DIR", run_dir.c_str(), 1);
  setenv("QUEST_TEST_DP_EPOCHS", std::to_string(epochs).c_str(), 1);
  if (fault.empty()) unsetenv("QUEST_TEST_RANK_FAULT");
  else setenv("QUEST_TEST_RANK_FAULT", fault.c_str(), 1);
  distributed::LaunchOptions o;
  o.nproc_per_node = ranks;
  o.timeout_seconds = timeout_seconds;
  const auto t0 = std::chrono::steady_clock::now();
  const int code = distributed::launch("/proc/self/exe", {"--gtest_filter=DataParallelRank.Train"}, o,
                                       [](const std::string& line) { std::fprintf(stderr, "launcher: %s\n", line.c_str()); });
  unsetenv("QUEST_TEST_RANK_FAULT");
  unsetenv("QUEST_TEST_DP_RUN_DIR");
  return {code, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

// max |a - b| / (max |b| + 1e-12) over every parameter.
double weight_difference(torch::nn::Module& a, torch::nn::Module& b) {
  double worst = 0;
  for (const auto& p : a.named_parameters()) {
    const auto& q = b.named_parameters()[p.key()];
    worst = std::max(worst, ((p.value() - q).abs().max() / (q.abs().max() + 1e-12)).item<double>());
  }
  return worst;
}
double weight_difference(VitTrainer& a, VitTrainer& b) { return weight_difference(*a.model(), *b.model()); }

TEST(DataParallel, ShardsCoverEverySampleExactlyOnce) {
  for (int64_t n : {0, 1, 2, 5, 31, 32, 33, 128, 1001})
    for (int world : {1, 2, 3, 4, 7}) {
      int64_t next = 0;
      for (int rank = 0; rank < world; ++rank) {
        const auto [lo, hi] = training::shard_range(n, rank, world);
        EXPECT_EQ(lo, next) << n << " " << world;  // contiguous, in rank order
        EXPECT_LE(hi - lo, n / world + 1);         // balanced
        EXPECT_GE(hi - lo, n / world);
        next = hi;
      }
      EXPECT_EQ(next, n);
    }
  EXPECT_THROW(training::shard_range(10, 2, 2), c10::Error);
}

TEST(DataParallel, AugmentationDrawnForTheWholeBatchThenShardedEqualsOneDraw) {
  const Dataset d = synthetic(10, 3);
  auto g1 = at::make_generator<at::CPUGeneratorImpl>(5);
  auto g2 = at::make_generator<at::CPUGeneratorImpl>(5);
  const auto whole = training::augment(d.images, 1, true, g1);
  const auto draw = training::draw_augmentation(10, 1, true, g2);
  const auto parts = torch::cat({training::apply_augmentation(d.images.slice(0, 0, 4), draw.slice(0, 4), 1),
                                 training::apply_augmentation(d.images.slice(0, 4, 10), draw.slice(4, 10), 1)});
  EXPECT_TRUE(torch::equal(whole, parts));
}

// 2 ranks x 16 samples = 1 process x 32 samples: the same loss at every one of 33 steps and the
// same final weights, to float32 rounding. Not bitwise: each rank sums its shard's per-sample
// gradients and the all-reduce adds the two sums, where one process reduces all 32 in another
// order (and the loss is scaled by n and back); measured: 5e-7 in the loss, 6e-6 in the weights.
TEST(DataParallel, TwoRanksReproduceOneProcessWithTheSameGlobalBatch) {
  TempDir one, two;
  VitTrainer alone(config((one.path / "run").string()));
  alone.fit(synthetic(330, 1), synthetic(50, 2), false);
  const Launched l = launch_ranks(two.path / "run", 2, 3);
  ASSERT_EQ(l.exit_code, 0);
  EXPECT_LT(l.seconds, 60);
  const auto a = step_losses(one.path / "run"), b = step_losses(two.path / "run");
  ASSERT_EQ(a.size(), 33u);
  ASSERT_EQ(b.size(), a.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(b[i], a[i], 1e-5 * std::abs(a[i])) << "step " << i;
    worst = std::max(worst, std::abs(b[i] - a[i]) / std::abs(a[i]));
  }
  const auto parallel = training::load_vit_run(runs::RunDir(two.path / "run").checkpoint().string());
  EXPECT_EQ(parallel->step(), 33);
  const double weights = weight_difference(*parallel, alone);
  EXPECT_LT(weights, 1e-4);
  std::printf("2 ranks vs 1 process: loss %.1e, weights %.1e (max relative difference)\n", worst, weights);
  // Rank 0 alone wrote the run: one metrics line per step, and the epoch lines say how it ran.
  const auto epochs = runs::RunDir(two.path / "run").read_metrics("epoch");
  EXPECT_EQ(epochs.size(), 3u);
  for (const auto& j : epochs) {
    EXPECT_EQ(j["world_size"], 2);
    EXPECT_GT(j["allreduce_bytes_per_step"].get<int64_t>(), 0);
  }
}

// The language model likewise (windows sharded, validation windows sharded, its tail on the last
// rank), with 2 and 3 ranks (6 windows: shards of 3 or 2).
TEST(DataParallel, RanksReproduceOneProcessForTheLanguageModel) {
  TempDir one;
  training::LmTrainer alone(lm_config((one.path / "run").string()));
  alone.fit(lm_data(), false);
  const auto a = step_losses(one.path / "run");
  const auto va = val_losses(one.path / "run");
  ASSERT_EQ(a.size(), 24u);
  for (int ranks : {2, 3}) {
    TempDir dir;
    ASSERT_EQ(launch_ranks(dir.path / "run", ranks, 2, "", 30, "lm").exit_code, 0);
    const auto b = step_losses(dir.path / "run");
    ASSERT_EQ(b.size(), a.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], 1e-5 * std::abs(a[i])) << ranks << " ranks, step " << i;
    const auto vb = val_losses(dir.path / "run");
    ASSERT_EQ(vb.size(), va.size());
    for (size_t i = 0; i < va.size(); ++i) EXPECT_NEAR(vb[i], va[i], 1e-5 * va[i]) << ranks << " ranks";
    const auto parallel = training::load_lm_run(runs::RunDir(dir.path / "run").checkpoint().string());
    EXPECT_LT(weight_difference(*parallel->model(), *alone.model()), 1e-4) << ranks << " ranks";
  }
}

// A rank killed mid-run: the other stops within the timeout with an error naming the lost rank
// and the step; the checkpoint of the last epoch stays whole; a resume (with 2 ranks) finishes
// the run with the weights the uninterrupted one-process run reaches.
TEST(DataParallel, AKilledRankIsNamedWithinTheTimeoutAndTheRunResumes) {
  TempDir dir;
  const fs::path run = dir.path / "run";
  const Launched killed = launch_ranks(run, 2, 3, "kill:1:15", /*timeout_seconds=*/10);
  EXPECT_EQ(killed.exit_code, 128 + 9);  // the launcher reports the first failure: rank 1's SIGKILL
  EXPECT_LT(killed.seconds, 45);
  const auto outcome = runs::RunDir(run).read_outcome();
  ASSERT_TRUE(outcome);
  EXPECT_EQ(outcome->status, runs::RunStatus::failed);
  EXPECT_NE(outcome->message.find("rank 0 at step 15"), std::string::npos) << outcome->message;
  EXPECT_NE(outcome->message.find("rank(s) 1 did not answer"), std::string::npos) << outcome->message;
  EXPECT_EQ(runs::RunDir(run).checkpoint_epoch(), std::optional<int64_t>(1));  // the last finished epoch's, intact

  const Launched resumed = launch_ranks(run, 2, 3);
  ASSERT_EQ(resumed.exit_code, 0);
  TempDir one;
  VitTrainer alone(config((one.path / "run").string()));
  alone.fit(synthetic(330, 1), synthetic(50, 2), false);
  const auto parallel = training::load_vit_run(runs::RunDir(run).checkpoint().string());
  EXPECT_EQ(parallel->step(), 33);
  EXPECT_LT(weight_difference(*parallel, alone), 1e-4);
}

// 2 ranks stopped in the second epoch, then the same run resumed by 1 process and by 3 ranks: the
// checkpoint is rank-independent (rank 0 shares it), and every continuation matches the
// one-process run.
TEST(DataParallel, ResumesWithADifferentNumberOfRanks) {
  TempDir one;
  VitTrainer alone(config((one.path / "run").string()));
  alone.fit(synthetic(330, 1), synthetic(50, 2), false);
  for (int ranks : {1, 3}) {
    TempDir dir;
    const fs::path run = dir.path / "run";
    ASSERT_NE(launch_ranks(run, 2, 3, "throw:1:15", 10).exit_code, 0);
    ASSERT_EQ(runs::RunDir(run).checkpoint_epoch(), std::optional<int64_t>(1));
    if (ranks == 1) {
      VitTrainer t(config(run.string()));
      t.fit(synthetic(330, 1), synthetic(50, 2), /*resume=*/true);
    } else {
      ASSERT_EQ(launch_ranks(run, ranks, 3).exit_code, 0);
    }
    const auto resumed = training::load_vit_run(runs::RunDir(run).checkpoint().string());
    EXPECT_EQ(resumed->step(), 33);
    EXPECT_LT(weight_difference(*resumed, alone), 1e-4) << ranks << " rank(s)";
    EXPECT_EQ(step_losses(run).size(), 33u);
  }
}

// The overlapped all-reduce: buckets sent from the gradient hooks during the backward (tiny buckets,
// so that there are many, out of order with the hooks) sum exactly what one all-reduce after the
// backward sums; a parameter the backward never reaches gets zeros; a rank with no backward at all
// still takes part; hooks outside arm/finish (and after the group is gone) do nothing.
TEST(DataParallel, OverlappedBucketsSumExactlyTheGradients) {
  struct Net : torch::nn::Module {
    torch::nn::Linear a{nullptr}, b{nullptr}, unused{nullptr};
    Net() {
      a = register_module("a", torch::nn::Linear(5, 7));
      b = register_module("b", torch::nn::Linear(7, 3));
      unused = register_module("unused", torch::nn::Linear(2, 2));
    }
    torch::Tensor forward(const torch::Tensor& x) { return b->forward(torch::tanh(a->forward(x))).square().sum(); }
  };
  auto make = [] {
    torch::manual_seed(7);
    return std::make_shared<Net>();
  };
  const auto x0 = torch::randn({4, 5}), x1 = torch::randn({6, 5});
  // The expected sums, from one process.
  auto net = make();
  net->forward(x0).backward();
  net->forward(x1).backward();
  std::vector<torch::Tensor> expected;
  for (auto& p : net->parameters()) expected.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));

  distributed::Rendezvous r0, r1;
  r1.rank = 1;
  r0.world_size = r1.world_size = 2;
  r0.master_port = r1.master_port = distributed::free_port();
  r0.timeout = r1.timeout = std::chrono::seconds(20);
  std::vector<torch::Tensor> got[2];
  std::string errors[2];
  std::shared_ptr<Net> models[2];
  auto rank = [&](int k, const distributed::Rendezvous& r, bool backward) {
    try {
      auto& model = models[k];  // made before the threads start: the initialisation draws from one generator
      {
        distributed::ProcessGroup g(r);
        g.watch_gradients(model->parameters(), 64);  // 16 floats: a bucket per tensor or smaller
        for (int step = 0; step < 2; ++step) {       // twice: the buckets are reused
          model->zero_grad();
          g.arm_gradients();
          if (backward) model->forward(k == 0 ? x0 : x1).backward();
          g.finish_gradients("the test's all-reduce");
        }
        for (auto& p : model->parameters()) got[k].push_back(p.grad().clone());
      }
      model->zero_grad();
      model->forward(x0).backward();  // the group is gone: plain gradients
    } catch (const std::exception& e) {
      errors[k] = e.what();
    }
  };
  models[0] = make(), models[1] = make();
  std::thread t0([&] { rank(0, r0, true); });
  rank(1, r1, true);
  t0.join();
  ASSERT_EQ(errors[0] + errors[1], "");
  for (int k = 0; k < 2; ++k) {
    ASSERT_EQ(got[k].size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) EXPECT_TRUE(torch::equal(got[k][i], expected[i])) << "rank " << k << " tensor " << i;
  }

  // Rank 1 without a backward (an empty shard): the sums are rank 0's gradients.
  auto alone = make();
  alone->forward(x0).backward();
  for (auto& v : got) v.clear();
  r0.master_port = r1.master_port = distributed::free_port();
  models[0] = make(), models[1] = make();
  std::thread t1([&] { rank(0, r0, true); });
  rank(1, r1, false);
  t1.join();
  ASSERT_EQ(errors[0] + errors[1], "");
  const auto params = alone->parameters();
  for (int k = 0; k < 2; ++k)
    for (size_t i = 0; i < params.size(); ++i) {
      const auto want = params[i].grad().defined() ? params[i].grad() : torch::zeros_like(params[i]);
      EXPECT_TRUE(torch::equal(got[k][i], want)) << "rank " << k << " tensor " << i;
    }
}

TEST(DataParallel, BadRendezvousIsAClearError) {
  // The port in use: rank 0 cannot host the store.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  distributed::Rendezvous r;
  r.world_size = 2;
  r.master_port = ntohs(addr.sin_port);
  r.timeout = std::chrono::seconds(3);
  try {
    distributed::ProcessGroup g(r);
    ADD_FAILURE() << "no error";
  } catch (const distributed::DistributedError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot host the rendezvous"), std::string::npos) << e.what();
  }
  close(fd);

  // Nobody hosts it: rank 1 gives up after the timeout.
  r.rank = 1;
  r.master_port = distributed::free_port();
  r.timeout = std::chrono::seconds(2);
  try {
    distributed::ProcessGroup g(r);
    ADD_FAILURE() << "no error";
  } catch (const distributed::DistributedError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot reach the rendezvous"), std::string::npos) << e.what();
  }

  // Ranks that disagree on the world size: the odd one says so, rank 0 names it.
  distributed::Rendezvous r0, r1;
  r0.world_size = 2, r1.world_size = 3, r1.rank = 1;
  r0.master_port = r1.master_port = distributed::free_port();
  r0.timeout = r1.timeout = std::chrono::seconds(4);
  std::string error0, error1;
  std::thread t0([&] {
    try {
      distributed::ProcessGroup g(r0);
    } catch (const std::exception& e) {
      error0 = e.what();
    }
  });
  try {
    distributed::ProcessGroup g(r1);
  } catch (const std::exception& e) {
    error1 = e.what();
  }
  t0.join();
  EXPECT_NE(error1.find("WORLD_SIZE is 3 here but 2 on rank 0"), std::string::npos) << error1;
  EXPECT_NE(error0.find("rank 1 reported"), std::string::npos) << error0;

  // torchrun's variables, checked.
  setenv("WORLD_SIZE", "2", 1);
  setenv("RANK", "2", 1);
  EXPECT_THROW(distributed::rendezvous_from_env(), std::invalid_argument);
  setenv("RANK", "1", 1);
  setenv("MASTER_PORT", "http", 1);
  EXPECT_THROW(distributed::rendezvous_from_env(), std::invalid_argument);
  unsetenv("MASTER_PORT");
  EXPECT_EQ(distributed::rendezvous_from_env()->rank, 1);
  unsetenv("WORLD_SIZE");
  unsetenv("RANK");
  EXPECT_FALSE(distributed::rendezvous_from_env());
}

}  // namespace
}  // namespace quest
