// Uses the installed quest: functional attention and the module, forward and backward.
#include <quest/quest.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  // Functional: (B, H, N, D) tensors, any kind of the family.
  auto q = torch::randn({2, 4, 16, 32}, torch::requires_grad());
  auto k = torch::randn({2, 4, 16, 32}, torch::requires_grad());
  auto v = torch::randn({2, 4, 16, 32}, torch::requires_grad());
  auto out = quest::attention(q, k, v, quest::AttentionOptions(quest::Kind::quest).causal(true));
  out.sum().backward();

  // Module: a drop-in multi-head attention over (B, N, E) sequences.
  quest::nn::MultiheadAttention mha(quest::nn::MultiheadAttentionOptions(64, 4).kind(quest::Kind::quest));
  auto y = mha(torch::randn({2, 10, 64}));

  const bool ok = out.sizes() == q.sizes() && k.grad().defined() && y.size(2) == 64;
  std::cout << "consumer: quest::attention " << out.sizes() << ", MultiheadAttention " << y.sizes()
            << (ok ? " -- ok" : " -- FAILED") << std::endl;
  return ok ? 0 : 1;
}
