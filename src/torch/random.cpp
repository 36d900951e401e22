#include "quest/torch/random.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/TensorBody.h>
#include <torch/torch.h>

#include <limits>
#include <optional>

namespace quest {

namespace {
thread_local std::optional<at::Generator> scoped;
}

at::Generator current_generator() {
  return scoped ? *scoped : at::detail::getDefaultCPUGenerator();
}

GeneratorScope::GeneratorScope(at::Generator generator) : had_previous_(scoped.has_value()) {
  if (had_previous_) previous_ = *scoped;
  scoped = std::move(generator);
}

GeneratorScope::~GeneratorScope() {
  if (had_previous_) scoped = previous_;
  else scoped.reset();
}

at::Generator make_generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

uint64_t draw_seed() {
  return static_cast<uint64_t>(
      torch::randint(std::numeric_limits<int64_t>::max(), {1}, current_generator(), torch::kLong)
          .item<int64_t>());
}

}  // namespace quest
