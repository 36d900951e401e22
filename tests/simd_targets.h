// Runs a test body once per SIMD target the fused kernel was compiled for and this CPU supports
// (e.g. AVX3, AVX2, SSE4 on an AVX-512 machine), so every target's code is checked where it can be.
#pragma once

#include <hwy/targets.h>

#include <string>

namespace quest::testing {

template <typename F>
void for_each_simd_target(F&& body) {
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    body(std::string(hwy::TargetName(target)));
  }
  hwy::SetSupportedTargetsForTest(0);  // back to the best target
}

}  // namespace quest::testing
