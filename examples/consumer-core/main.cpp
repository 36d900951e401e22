// Uses the installed torch-free core: QUEST attention over plain buffers, reference and fused.
#include <quest/core/fused.h>
#include <quest/core/reference.h>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const int64_t B = 1, H = 2, N = 17, D = 8;
  std::vector<float> q(B * H * N * D), k(q.size()), v(q.size()), ref(q.size()), fused(q.size());
  for (size_t i = 0; i < q.size(); ++i) {  // deterministic, varied inputs
    q[i] = std::sin(0.37f * i);
    k[i] = 3 * std::cos(0.11f * i);
    v[i] = std::sin(0.05f * i + 1);
  }
  quest::AttentionArgs<float> a;
  a.dims = {B, H, N, N, D, D};
  a.q = quest::contiguous_view<const float>(q.data(), H, N, D);
  a.k = quest::contiguous_view<const float>(k.data(), H, N, D);
  a.v = quest::contiguous_view<const float>(v.data(), H, N, D);
  a.k_norm = quest::kind_traits(quest::Kind::quest).k_norm;  // keys on the unit sphere, scale 1
  a.causal = true;
  std::vector<double> lse(B * H * N);
  quest::reference::forward(a, quest::contiguous_view(ref.data(), H, N, D), lse.data());
  std::vector<float> shift(B * H * N), log_sum(B * H * N);
  quest::fused::forward(a, quest::contiguous_view(fused.data(), H, N, D), {shift.data(), log_sum.data()},
                        nullptr, 1);
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) worst = std::fmax(worst, std::fabs(ref[i] - fused[i]));
  const bool ok = worst < 1e-5;
  std::printf("consumer-core: fused (%s) vs reference, max |diff| %.2g -- %s\n", quest::fused::simd_target().c_str(),
              worst, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
