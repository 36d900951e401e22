// IDX files (the MNIST / Fashion-MNIST format), gzipped or plain, read with zlib. Every header
// field is validated; a truncated or corrupt file raises an error that names the file.
#pragma once

#include <torch/torch.h>

#include <string>

namespace quest::data {

// (N, rows, cols) uint8 images from an idx3-ubyte file (magic 0x00000803).
torch::Tensor read_idx_images(const std::string& path);

// (N) int64 labels from an idx1-ubyte file (magic 0x00000801), each checked to be < num_classes.
torch::Tensor read_idx_labels(const std::string& path, int64_t num_classes = 10);

struct ImageSet {
  torch::Tensor images;  // (N, rows, cols) uint8
  torch::Tensor labels;  // (N) int64
};

// The "train" or "t10k" split of an MNIST-format directory, e.g. /usr/share/datasets/fashion-mnist
// (<split>-images-idx3-ubyte.gz and <split>-labels-idx1-ubyte.gz; the files may also be
// uncompressed, without .gz). Image and label counts must agree.
ImageSet read_mnist_split(const std::string& dir, const std::string& split);

// Where Debian's dataset-fashion-mnist package puts the files.
inline const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

}  // namespace quest::data
