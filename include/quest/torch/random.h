// Where quest draws randomness that a caller did not give explicitly (attention-dropout seeds,
// dropout and drop-path masks, parameter initialisation in quest::nn::init): the innermost
// GeneratorScope of the calling thread, else torch's default CPU generator, so that
// torch::manual_seed keeps working for code that never opens a scope. A training run opens a
// scope with a generator it owns: runs side by side in threads then neither share nor disturb a
// random stream, and each is reproducible on its own.
#pragma once

#include <ATen/core/Generator.h>

#include <cstdint>

namespace quest {

// The generator of the innermost GeneratorScope on this thread, or torch's default CPU generator.
at::Generator current_generator();

// Makes `generator` the current one on this thread until the scope ends (scopes nest).
class GeneratorScope {
 public:
  explicit GeneratorScope(at::Generator generator);
  ~GeneratorScope();
  GeneratorScope(const GeneratorScope&) = delete;
  GeneratorScope& operator=(const GeneratorScope&) = delete;

 private:
  at::Generator previous_;
  bool had_previous_;
};

// A CPU generator seeded with `seed` (torch's Philox-free mt19937 CPU generator).
at::Generator make_generator(uint64_t seed);

// A 63-bit seed drawn from the current generator.
uint64_t draw_seed();

}  // namespace quest
