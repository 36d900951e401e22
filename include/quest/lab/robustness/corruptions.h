// Common corruptions for small grayscale images (B, 1, H, W) in [0, 1], five severities each,
// after Hendrycks & Dietterich's ImageNet-C / CIFAR-10-C definitions (CIFAR-10-C's 32x32
// parameters, the closest published size to 28x28). Each formula and its parameters are in the
// docs/robustness.md and in `corruption_table()`.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace quest::robustness {

struct CorruptionSpec {
  std::string name;
  std::string family;   // noise, blur, digital, weather
  std::string formula;  // what is done to an image x in [0, 1]
  std::vector<std::string> severities;  // the parameters of severities 1..5
};

// Every corruption, in a fixed order.
const std::vector<CorruptionSpec>& corruption_table();
std::vector<std::string> corruption_names();

// Corrupts a batch (B, 1, H, W) float in [0, 1]; severity in 1..5. Deterministic in (seed, name,
// severity): the same call gives the same images. The result is in [0, 1], same shape.
torch::Tensor corrupt(const torch::Tensor& images, const std::string& name, int severity,
                      uint64_t seed);

}  // namespace quest::robustness
