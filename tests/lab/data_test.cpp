// IDX and text-corpus reading: the real package files (Fashion-MNIST, linux-doc), and synthetic
// good, truncated, corrupt, empty and binary files.
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "error_message.h"
#include "quest/lab/data/idx.h"
#include "quest/lab/data/text.h"

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

std::vector<unsigned char> bytes(const std::string& s) { return {s.begin(), s.end()}; }

TEST(Text, CleansRestructuredText) {
  const std::string rst =
      ".. SPDX-License-Identifier: GPL-2.0\r\n\r\n=====\r\nTitle\r\n=====\r\n\r\n\r\n\r\n"
      "Some prose, with ``markup``.\n.. note::\n\n   Indented text stays.\n----\n";
  EXPECT_EQ(clean_rst(rst), "Title\n\nSome prose, with ``markup``.\n\n   Indented text stays.\n");
  EXPECT_EQ(clean_rst("====\n\n..\n"), "");
  EXPECT_EQ(clean_rst("a = b\n---x\n"), "a = b\n---x\n");  // not adornments
}

TEST(Text, ReadsDocumentsSkipsEmptyAndBinaryAndSplitsByDocument) {
  TempDir dir;
  fs::create_directories(dir.path / "sub");
  dir.raw("b.rst", bytes("Second document.\n"));
  dir.gz("sub/a.rst.gz", bytes("Title\n=====\n\nFirst document.\n"));
  dir.raw("empty.rst", bytes("======\n.. comment\n"));
  dir.raw("binary.rst", {'a', 'b', 0, 'c'});
  dir.raw("ignored.txt", bytes("not matched\n"));
  const TextCorpus c = read_text_corpus({dir.path.string()});
  ASSERT_EQ(c.documents.size(), 2u);
  EXPECT_EQ(c.documents[0].name, "b.rst");  // name order
  EXPECT_EQ(c.documents[1].name, "sub/a.rst.gz");
  EXPECT_EQ(c.documents[1].text, "Title\n\nFirst document.\n");
  EXPECT_EQ(c.files_read, 4);
  EXPECT_EQ(c.skipped_empty, 1);
  EXPECT_EQ(c.skipped_binary, 1);
  EXPECT_EQ(c.bytes(), 17 + 23);
  const ByteSplits s = byte_splits(c);
  EXPECT_EQ(s.train.numel() + s.valid.numel() + s.test.numel(), c.bytes() + 2);  // + 2 ends
  // max_bytes stops after the document that reaches it
  EXPECT_EQ(read_text_corpus({dir.path.string(), {".rst", ".rst.gz"}, 1}).documents.size(), 1u);
}

TEST(Text, SplitIsStableAndNinetyFiveFive) {
  EXPECT_EQ(split_of("admin-guide/README.rst.gz"), split_of("admin-guide/README.rst.gz"));
  int counts[3] = {0, 0, 0};
  for (int i = 0; i < 20000; ++i) ++counts[static_cast<int>(split_of("doc" + std::to_string(i)))];
  EXPECT_NEAR(counts[0] / 20000.0, 0.90, 0.01);
  EXPECT_NEAR(counts[1] / 20000.0, 0.05, 0.01);
  EXPECT_NEAR(counts[2] / 20000.0, 0.05, 0.01);
}

TEST(Text, ErrorsNameTheFileOrThePackage) {
  TempDir dir;
  std::vector<unsigned char> gz;
  {
    const std::string p = dir.gz("whole.rst.gz", bytes(std::string(5000, 'x') + "\n"));
    std::ifstream in(p, std::ios::binary);
    gz.assign(std::istreambuf_iterator<char>(in), {});
    fs::remove(p);
  }
  gz.resize(gz.size() / 2);
  dir.raw("cut.rst.gz", gz);
  EXPECT_NE(message_of([&] { read_text_corpus({dir.path.string()}); }).find("cut.rst.gz"),
            std::string::npos);
  const std::string missing = message_of([&] { read_text_corpus({"/nonexistent/quest"}); });
  EXPECT_NE(missing.find("/nonexistent/quest"), std::string::npos) << missing;
  const std::string none = message_of([&] { read_text_corpus({dir.path.string(), {".md"}}); });
  EXPECT_NE(none.find("no text documents"), std::string::npos) << none;
  if (!fs::exists(linux_doc_dir())) {
    const std::string m = message_of([&] { read_text_corpus(); });
    EXPECT_NE(m.find("install Debian's linux-doc package"), std::string::npos) << m;
  }
}

TEST(Text, ReadsTheLinuxDocPackage) {
  if (!fs::exists(linux_doc_dir())) GTEST_SKIP() << "linux-doc is not installed";
  const TextCorpus c = read_text_corpus();
  EXPECT_GT(c.documents.size(), 3000u);
  EXPECT_GT(c.bytes(), 5'000'000);  // the floor for prose after cleaning
  const ByteSplits s = byte_splits(c);
  EXPECT_GT(s.valid.numel(), c.bytes() / 40);
  EXPECT_GT(s.test.numel(), c.bytes() / 40);
}

}  // namespace
}  // namespace quest::data
