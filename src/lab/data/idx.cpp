#include "quest/lab/data/idx.h"

#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

namespace quest::data {
namespace {

// A gzip (or plain) file read to the end; gzread reads uncompressed files transparently.
struct GzFile {
  explicit GzFile(const std::string& path) : path(path), file(gzopen(path.c_str(), "rb")) {
    TORCH_CHECK(file, "quest::data: cannot open '", path, "'");
  }
  ~GzFile() {
    if (file) gzclose(file);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  // Exactly n bytes, or an error naming the file: truncated (too few) or corrupt (zlib error).
  void read(void* dst, size_t n, const char* what) {
    auto* out = static_cast<unsigned char*>(dst);
    size_t done = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
      const int got = gzread(file, out + done, chunk);
      if (got < 0) {
        int errnum = 0;
        const char* msg = gzerror(file, &errnum);
        TORCH_CHECK(false, "quest::data: '", path, "' is corrupt while reading ", what, ": ", msg);
      }
      if (got == 0) break;
      done += static_cast<size_t>(got);
    }
    if (done < n) {
      int errnum = 0;
      const char* msg = gzerror(file, &errnum);
      TORCH_CHECK(false, "quest::data: '", path, "' is truncated: expected ", n, " bytes of ", what,
                  ", got ", done, errnum != Z_OK ? std::string(" (") + msg + ")" : std::string());
    }
  }

  uint32_t read_be32(const char* what) {
    unsigned char b[4];
    read(b, 4, what);
    return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | b[3];
  }

  // After the payload there must be nothing but the end of the stream.
  void expect_end() {
    unsigned char extra;
    const int got = gzread(file, &extra, 1);
    TORCH_CHECK(got == 0, "quest::data: '", path, "' has data after the declared payload");
  }

  std::string path;
  gzFile file;
};

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
