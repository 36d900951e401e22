// What several lab test files share: a temporary directory per test, and a tiny image dataset.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include "quest/lab/tasks/vit.h"

namespace quest::testing {

// A fresh, empty directory under the system's temp directory, removed with the object.
struct TempDir {
  explicit TempDir(const std::string& prefix = "quest_test")
      : path(std::filesystem::temp_directory_path() /
             (prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++))) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string str() const { return path.string(); }
  std::filesystem::path path;
  static inline int counter = 0;
};

// Two classes of 8x8 images: class 1 is brighter in the top-left quadrant.
inline training::Dataset synthetic_images(int64_t n, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto images = torch::randn({n, 1, 8, 8}, gen) * 0.5;
  const auto labels = torch::randint(0, 2, {n}, gen, torch::kLong);
  images.narrow(2, 0, 4).narrow(3, 0, 4).add_(labels.to(torch::kFloat).view({n, 1, 1, 1}) * 1.5);
  return {images, labels};
}

}  // namespace quest::testing
