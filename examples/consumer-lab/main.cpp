// Uses the installed lab: the generic training engine on a user's own task (a one-block attention
// classifier on synthetic sequences), with a results table.
#include <quest/lab/report/table.h>
#include <quest/lab/training/engine.h>
#include <quest/quest.h>
#include <quest/torch/nn/init.h>
#include <quest/torch/random.h>

#include <iostream>

// Label: whether the sequence's first token points the same way as its mean.
class SequenceTask : public quest::training::Task {
 public:
  SequenceTask() : mha(quest::nn::MultiheadAttentionOptions(8, 2)), head(8, 2) {
    auto gen = quest::make_generator(1);
    x = torch::randn({256, 6, 8}, gen);
    y = (x.select(1, 0) * x.mean(1)).sum(1).gt(0).to(torch::kLong);
    net->register_module("mha", mha);
    net->register_module("head", head);
  }
  torch::nn::Module& model() override { return *net; }
  void initialize(at::Generator g) override { quest::nn::reset_parameters(*net, g); }
  int64_t steps_per_epoch() const override { return 8; }
  void begin_epoch(int64_t, at::Generator g) override { order = torch::randperm(256, g); }
  quest::training::StepOutput forward_step(int64_t b) override {
    const auto idx = order.slice(0, b * 32, (b + 1) * 32);
    const auto logits = head(mha(x.index_select(0, idx)).mean(1));
    const auto labels = y.index_select(0, idx);
    return {torch::cross_entropy_loss(logits, labels), 32, logits.argmax(1).eq(labels).sum().item<int64_t>(),
            logits.logsumexp(1)};  // log-partitions: log Z is logged, and z_loss can act on it
  }
  std::shared_ptr<torch::nn::Module> net = std::make_shared<torch::nn::Module>();
  quest::nn::MultiheadAttention mha;
  torch::nn::Linear head;
  torch::Tensor x, y, order;
};

int main() {
  SequenceTask task;
  quest::training::EngineConfig config;
  config.epochs = 5;
  config.lr = 1e-2;
  quest::training::Engine engine(config, task);
  double first = 0, last = 0;
  engine.fit(false, [&](const nlohmann::json& line) {
    if (line["step"] == 0) first = line["loss"];
    last = line["loss"];
  });
  quest::report::Table table({{"steps"}, {"first loss", 4}, {"last loss", 4}});
  table.add_row({engine.step(), first, last});
  std::cout << table.console();
  const bool ok = engine.step() == 40 && std::isfinite(last);
  std::cout << "consumer-lab: engine -- " << (ok ? "ok" : "FAILED") << std::endl;
  return ok ? 0 : 1;
}
