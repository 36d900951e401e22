// IDX reading: the real Fashion-MNIST package files, and synthetic good, truncated and corrupt files.
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "error_message.h"
#include "quest/lab/data/idx.h"

namespace quest::data {
namespace {

namespace fs = std::filesystem;

std::string message_of(const std::function<void()>& f) { return testing::error_message(f); }

std::vector<unsigned char> be32(uint32_t v) {
  return {static_cast<unsigned char>(v >> 24), static_cast<unsigned char>(v >> 16),
          static_cast<unsigned char>(v >> 8), static_cast<unsigned char>(v)};
}

std::vector<unsigned char> image_file(uint32_t n, uint32_t rows, uint32_t cols) {
  std::vector<unsigned char> b;
  for (uint32_t v : {0x803u, n, rows, cols})
    for (unsigned char c : be32(v)) b.push_back(c);
  for (uint32_t i = 0; i < n * rows * cols; ++i) b.push_back(static_cast<unsigned char>(i * 7));
  return b;
}

std::vector<unsigned char> label_file(std::vector<unsigned char> labels) {
  std::vector<unsigned char> b;
  for (uint32_t v : {0x801u, static_cast<uint32_t>(labels.size())})
    for (unsigned char c : be32(v)) b.push_back(c);
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

struct TempDir {
  TempDir() : path(fs::temp_directory_path() / ("quest_data_test_" + std::to_string(::getpid()))) {
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string gz(const std::string& name, const std::vector<unsigned char>& bytes) {
    const std::string p = (path / name).string();
    gzFile f = gzopen(p.c_str(), "wb");
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
    return p;
  }
  std::string raw(const std::string& name, const std::vector<unsigned char>& bytes) {
    const std::string p = (path / name).string();
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    return p;
  }
  fs::path path;
};

TEST(Idx, ReadsTheFashionMnistPackage) {
  if (!fs::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const ImageSet test = read_mnist_split(kFashionMnistDir, "t10k");
  EXPECT_EQ(test.images.sizes(), (std::vector<int64_t>{10000, 28, 28}));
  EXPECT_EQ(test.labels.size(0), 10000);
  EXPECT_EQ(test.labels.min().item<int64_t>(), 0);
  EXPECT_EQ(test.labels.max().item<int64_t>(), 9);
  EXPECT_EQ(torch::bincount(test.labels).min().item<int64_t>(), 1000);  // balanced classes
}

TEST(Idx, RoundTripsSyntheticFiles) {
  TempDir dir;
  dir.gz("x-images-idx3-ubyte.gz", image_file(3, 2, 4));
  dir.raw("x-labels-idx1-ubyte", label_file({1, 0, 9}));  // uncompressed also works
  const ImageSet set = read_mnist_split(dir.path.string(), "x");
  EXPECT_EQ(set.images.sizes(), (std::vector<int64_t>{3, 2, 4}));
  EXPECT_EQ(set.images[1][0][1].item<int>(), (9 * 7) % 256);
  EXPECT_TRUE(torch::equal(set.labels, torch::tensor({1, 0, 9}, torch::kLong)));
}

TEST(Idx, TruncatedFileNamesTheFile) {
  TempDir dir;
  auto bytes = image_file(3, 2, 4);
  bytes.resize(bytes.size() - 5);
  const std::string p = dir.gz("t-images-idx3-ubyte.gz", bytes);
  const std::string msg = message_of([&] { read_idx_images(p); });
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST(Idx, CorruptGzipNamesTheFile) {
  TempDir dir;
  const std::string good = dir.gz("c.gz", image_file(50, 8, 8));
  std::ifstream in(good, std::ios::binary);
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), {});
  for (size_t i = 20; i < bytes.size() - 10; i += 7) bytes[i] ^= 0x5a;  // damage the deflate data
  const std::string p = dir.raw("c-images-idx3-ubyte.gz", bytes);
  const std::string msg = message_of([&] { read_idx_images(p); });
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
}

TEST(Idx, BadHeadersAndLabels) {
  TempDir dir;
  const std::string labels_as_images = dir.gz("a.gz", label_file({1, 2}));
  EXPECT_NE(message_of([&] { read_idx_images(labels_as_images); }).find("not an idx3-ubyte image file"),
            std::string::npos);
  const std::string bad_label = dir.gz("b.gz", label_file({1, 10}));
  EXPECT_NE(message_of([&] { read_idx_labels(bad_label); }).find("label 1 is 10, outside [0, 10)"),
            std::string::npos);
  auto extra = label_file({1, 2});
  extra.push_back(3);
  const std::string trailing = dir.gz("e.gz", extra);
  EXPECT_NE(message_of([&] { read_idx_labels(trailing); }).find("data after the declared payload"),
            std::string::npos);
  EXPECT_NE(message_of([&] { read_idx_images((dir.path / "missing.gz").string()); }).find("cannot open"),
            std::string::npos);
}

TEST(Idx, CountMismatchBetweenImagesAndLabels) {
  TempDir dir;
  dir.gz("m-images-idx3-ubyte.gz", image_file(3, 2, 2));
  dir.gz("m-labels-idx1-ubyte.gz", label_file({1, 2}));
  EXPECT_NE(message_of([&] { read_mnist_split(dir.path.string(), "m"); }).find("has 3 images but"),
            std::string::npos);
}

}  // namespace
}  // namespace quest::data
