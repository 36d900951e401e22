// FusedAdamW and clip_grad_norm against LibTorch's AdamW and clip_grad_norm_: the same updates up
// to float rounding, interchangeable state, and the fallback for tensors the loop does not cover.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quest/lab/training/optimizer.h"

namespace {

using quest::training::FusedAdamW;

// Two parameter groups (with and without weight decay), tensors of several sizes, one of them
// large enough to be split across threads.
std::vector<torch::Tensor> make_params(torch::ScalarType dtype = torch::kFloat) {
  torch::manual_seed(3);
  std::vector<torch::Tensor> ps;
  for (int64_t n : {7, 64, 100000, 1}) ps.push_back(torch::randn({n}, dtype).requires_grad_());
  return ps;
}

template <typename Opt>
std::unique_ptr<Opt> make_opt(const std::vector<torch::Tensor>& ps) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{ps[0], ps[2]},
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(3e-3).weight_decay(0.05)));
  groups.emplace_back(std::vector<torch::Tensor>{ps[1], ps[3]},
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(3e-3).weight_decay(0)));
  return std::make_unique<Opt>(std::move(groups));
}

// Gradients from a seeded stream, the same for both optimizers; some steps leave ps[3] without one.
void set_grads(const std::vector<torch::Tensor>& ps, int step) {
  torch::manual_seed(100 + step);
  for (size_t i = 0; i < ps.size(); ++i) {
    if (i == 3 && step % 3 == 0) {
      ps[i].mutable_grad() = torch::Tensor();
      continue;
    }
    ps[i].mutable_grad() = torch::randn_like(ps[i]) * (1 + step);
  }
}

// Steps [from, to) of `opt` over `ps`, each with its seeded gradients.
void run_steps(const std::vector<torch::Tensor>& ps, torch::optim::Optimizer& opt, int from, int to) {
  for (int step = from; step < to; ++step) {
    set_grads(ps, step);
    opt.step();
  }
}

void expect_close(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b, double rtol) {
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(torch::allclose(a[i], b[i], rtol, 1e-7)) << "parameter " << i << ": max diff "
                                                          << (a[i] - b[i]).abs().max().item<double>();
}

TEST(FusedAdamW, MatchesTorchAdamW) {
  auto ours = make_params(), theirs = make_params();
  auto fused = make_opt<FusedAdamW>(ours);
  auto reference = make_opt<torch::optim::AdamW>(theirs);
  run_steps(ours, *fused, 0, 30);
  run_steps(theirs, *reference, 0, 30);
  expect_close(ours, theirs, 1e-5);
  // And it moved: a test that cannot fail would not notice a step that does nothing.
  EXPECT_FALSE(torch::allclose(ours[2], make_params()[2], 1e-3, 1e-3));
}

TEST(FusedAdamW, StateIsTorchs) {
  // Ten steps with FusedAdamW, saved, loaded into torch's AdamW, ten more: as twenty with AdamW.
  auto ours = make_params(), theirs = make_params();
  auto fused = make_opt<FusedAdamW>(ours);
  auto reference = make_opt<torch::optim::AdamW>(theirs);
  run_steps(ours, *fused, 0, 10);
  std::stringstream saved;
  {
    torch::serialize::OutputArchive archive;
    fused->save(archive);
    archive.save_to(saved);
  }
  auto resumed = make_opt<torch::optim::AdamW>(ours);
  torch::serialize::InputArchive archive;
  archive.load_from(saved);
  resumed->load(archive);
  run_steps(ours, *resumed, 10, 20);
  run_steps(theirs, *reference, 0, 20);
  expect_close(ours, theirs, 1e-5);
}

TEST(FusedAdamW, FallsBackForDouble) {
  auto ours = make_params(torch::kDouble), theirs = make_params(torch::kDouble);
  auto fused = make_opt<FusedAdamW>(ours);
  auto reference = make_opt<torch::optim::AdamW>(theirs);
  run_steps(ours, *fused, 0, 5);
  run_steps(theirs, *reference, 0, 5);
  for (size_t i = 0; i < ours.size(); ++i) EXPECT_TRUE(torch::equal(ours[i], theirs[i])) << i;
}

TEST(ClipGradNorm, MatchesTorch) {
  for (double max_norm : {double{INFINITY}, 1e9, 10.0, 0.5}) {
    auto ours = make_params(), theirs = make_params();
    set_grads(ours, 4);
    set_grads(theirs, 4);
    const double a = quest::training::clip_grad_norm(ours, max_norm);
    const double b = torch::nn::utils::clip_grad_norm_(theirs, max_norm);
    EXPECT_NEAR(a, b, 1e-5 * b) << "max_norm " << max_norm;
    for (size_t i = 0; i < ours.size(); ++i) {
      if (!ours[i].grad().defined()) continue;
      EXPECT_TRUE(torch::allclose(ours[i].grad(), theirs[i].grad(), 1e-5, 1e-8)) << i;
    }
    if (max_norm == 0.5) {  // clipped: the new norm is the bound
      double sum = 0;
      for (const auto& p : ours)
        if (p.grad().defined()) sum += p.grad().to(torch::kDouble).pow(2).sum().item<double>();
      EXPECT_NEAR(std::sqrt(sum), 0.5, 1e-5);
    }
  }
}

TEST(ClipGradNorm, NonFiniteNormScalesNothing) {
  auto ps = make_params();
  set_grads(ps, 1);
  ps[1].mutable_grad()[0] = NAN;
  const torch::Tensor before = ps[0].grad().clone();
  EXPECT_TRUE(std::isnan(quest::training::clip_grad_norm(ps, 1.0)));
  EXPECT_TRUE(torch::equal(ps[0].grad(), before));
}

}  // namespace
