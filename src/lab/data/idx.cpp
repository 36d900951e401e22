#include "quest/lab/data/idx.h"

#include "gz_file.h"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

namespace quest::data {
namespace {

constexpr uint32_t kImagesMagic = 0x00000803, kLabelsMagic = 0x00000801;
constexpr uint32_t kMaxItems = 100'000'000, kMaxSide = 4096;

}  // namespace

torch::Tensor read_idx_images(const std::string& path) {
  GzFile f(path);
  const uint32_t magic = f.read_be32("the magic number");
  TORCH_CHECK(magic == kImagesMagic, "quest::data: '", path, "' is not an idx3-ubyte image file (magic 0x",
              std::hex, magic, ", expected 0x", kImagesMagic, ")");
  const uint32_t n = f.read_be32("the image count"), rows = f.read_be32("the row count"),
                 cols = f.read_be32("the column count");
  TORCH_CHECK(n > 0 && n <= kMaxItems, "quest::data: '", path, "' declares ", n, " images");
  TORCH_CHECK(rows > 0 && rows <= kMaxSide && cols > 0 && cols <= kMaxSide, "quest::data: '", path,
              "' declares images of ", rows, " x ", cols);
  torch::Tensor images = torch::empty({n, rows, cols}, torch::kUInt8);
  f.read(images.data_ptr<uint8_t>(), size_t(n) * rows * cols, "image pixels");
  f.expect_end();
  return images;
}

torch::Tensor read_idx_labels(const std::string& path, int64_t num_classes) {
  GzFile f(path);
  const uint32_t magic = f.read_be32("the magic number");
  TORCH_CHECK(magic == kLabelsMagic, "quest::data: '", path, "' is not an idx1-ubyte label file (magic 0x",
              std::hex, magic, ", expected 0x", kLabelsMagic, ")");
  const uint32_t n = f.read_be32("the label count");
  TORCH_CHECK(n > 0 && n <= kMaxItems, "quest::data: '", path, "' declares ", n, " labels");
  std::vector<uint8_t> raw(n);
  f.read(raw.data(), n, "labels");
  f.expect_end();
  torch::Tensor labels = torch::empty({n}, torch::kLong);
  int64_t* out = labels.data_ptr<int64_t>();
  for (uint32_t i = 0; i < n; ++i) {
    TORCH_CHECK(raw[i] < num_classes, "quest::data: '", path, "' label ", i, " is ", int(raw[i]),
                ", outside [0, ", num_classes, ")");
    out[i] = raw[i];
  }
  return labels;
}

ImageSet read_mnist_split(const std::string& dir, const std::string& split) {
  auto find = [&](const std::string& stem) {
    const std::filesystem::path gz = std::filesystem::path(dir) / (stem + ".gz");
    const std::filesystem::path plain = std::filesystem::path(dir) / stem;
    if (std::filesystem::exists(gz)) return gz.string();
    TORCH_CHECK(std::filesystem::exists(plain), "quest::data: neither '", gz.string(), "' nor '",
                plain.string(), "' exists");
    return plain.string();
  };
  const std::string images_path = find(split + "-images-idx3-ubyte");
  const std::string labels_path = find(split + "-labels-idx1-ubyte");
  ImageSet set{read_idx_images(images_path), read_idx_labels(labels_path)};
  TORCH_CHECK(set.images.size(0) == set.labels.size(0), "quest::data: '", images_path, "' has ",
              set.images.size(0), " images but '", labels_path, "' has ", set.labels.size(0),
              " labels");
  return set;
}

}  // namespace quest::data
