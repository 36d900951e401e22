// A gzip (or plain) file read with zlib, for the data readers: exact reads whose errors name the
// file (truncated, corrupt). Internal to src/lab/data.
#pragma once

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <string>

namespace quest::data {

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

  // Everything up to the end of the stream (at most `limit` bytes, else an error naming the file).
  std::string read_all(size_t limit) {
    std::string out;
    char buffer[1 << 16];
    for (;;) {
      const int got = gzread(file, buffer, sizeof buffer);
      if (got < 0) {
        int errnum = 0;
        const char* msg = gzerror(file, &errnum);
        TORCH_CHECK(false, "quest::data: '", path, "' is corrupt: ", msg);
      }
      if (got == 0) {
        int errnum = 0;
        const char* msg = gzerror(file, &errnum);  // a cut gzip stream ends in Z_BUF_ERROR
        TORCH_CHECK(errnum == Z_OK, "quest::data: '", path, "' is truncated or corrupt: ", msg);
        return out;
      }
      TORCH_CHECK(out.size() + static_cast<size_t>(got) <= limit, "quest::data: '", path,
                  "' is larger than ", limit, " bytes");
      out.append(buffer, static_cast<size_t>(got));
    }
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

}  // namespace quest::data
