#include "quest/lab/runs/run_dir.h"

#include <torch/serialize.h>
#include <torch/torch.h>

#include <zlib.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace quest::runs {

namespace fs = std::filesystem;

std::string to_string(RunStatus status) {
  switch (status) {
    case RunStatus::ok: return "ok";
    case RunStatus::diverged: return "diverged";
    case RunStatus::failed: return "failed";
  }
  return "?";
}

std::optional<RunStatus> status_from_string(const std::string& name) {
  for (RunStatus s : {RunStatus::ok, RunStatus::diverged, RunStatus::failed})
    if (to_string(s) == name) return s;
  return std::nullopt;
}

namespace {
// Writes the bytes and fsyncs the file, so that once this returns neither a killed process nor a
// power loss can leave it partial. Errors (a full disk: ENOSPC) name the file and the reason.
void write_durably(const fs::path& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  auto fail = [&](const char* step) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("cannot write '" + path.string() + "': " + step + std::strerror(err));
  };
  if (fd < 0) fail("");
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("");
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 && errno != EINVAL) fail("fsync: ");  // EINVAL: not a syncable file
  if (::close(fd) != 0) {
    const int err = errno;
    throw std::runtime_error("cannot write '" + path.string() + "': close: " + std::strerror(err));
  }
}
}  // namespace

void write_file_atomic(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  write_durably(tmp, text);
  fs::rename(tmp, path);
}

namespace {
constexpr char kCheckpointMagic[8] = {'Q', 'U', 'E', 'S', 'T', 'C', 'K', '1'};
constexpr size_t kHeader = 8 + 8 + 4;

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t get_le(const std::string& in, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(static_cast<unsigned char>(in[at + i])) << (8 * i);
  return v;
}
uint32_t crc_of(const char* data, size_t n) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (size_t done = 0; done < n;) {  // crc32 takes at most a uInt at a time
    const uInt chunk = static_cast<uInt>(std::min<size_t>(n - done, 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(data + done), chunk);
    done += chunk;
  }
  return static_cast<uint32_t>(crc);
}
}  // namespace

void save_archive(const fs::path& path, torch::serialize::OutputArchive& archive) {
  std::ostringstream body;
  archive.save_to(body);
  const std::string bytes = body.str();
  std::string header(kCheckpointMagic, sizeof kCheckpointMagic);
  put_le(header, bytes.size(), 8);
  put_le(header, crc_of(bytes.data(), bytes.size()), 4);
  write_durably(path, header + bytes);
}

std::string read_archive_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read '" + path.string() + "'");
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

void load_archive(const fs::path& path, torch::serialize::InputArchive& archive) {
  load_archive_bytes(read_archive_file(path), path, archive);
}

void load_archive_bytes(const std::string& file, const fs::path& path, torch::serialize::InputArchive& archive) {
  if (file.compare(0, 4, "PK\x03\x04") == 0) {  // written before the checked format
    std::istringstream zip(file);
    archive.load_from(zip);
    return;
  }
  if (file.size() < kHeader || file.compare(0, sizeof kCheckpointMagic, kCheckpointMagic, sizeof kCheckpointMagic) != 0)
    throw std::runtime_error("'" + path.string() + "' is not a quest checkpoint (no QUESTCK1 header)");
  const uint64_t size = get_le(file, 8, 8);
  if (size != file.size() - kHeader)
    throw std::runtime_error("'" + path.string() + "' is truncated or extended: the header says " +
                             std::to_string(size) + " bytes of archive, the file has " +
                             std::to_string(file.size() - kHeader));
  if (crc_of(file.data() + kHeader, size) != get_le(file, 16, 4))
    throw std::runtime_error("'" + path.string() + "' is corrupt: its CRC-32 does not match");
  std::istringstream body(file.substr(kHeader));
  archive.load_from(body);
}

RunDir::RunDir(fs::path root) : root_(std::move(root)) {}

void RunDir::create() const {
  if (!empty()) fs::create_directories(root_);
}

void RunDir::write_config(const nlohmann::json& config) const {
  create();
  write_file_atomic(this->config(), config.dump(2) + "\n");
}

nlohmann::json RunDir::read_config() const {
  std::ifstream in(config());
  if (!in) throw std::runtime_error("no config.json in '" + root_.string() + "'");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error("'" + config().string() + "': " + e.what());
  }
}

void RunDir::write_result(const nlohmann::json& result) const {
  create();
  write_file_atomic(this->result(), result.dump(2) + "\n");
}

namespace {
void append_line(const fs::path& file, const nlohmann::json& line) {
  std::ofstream out(file, std::ios::app);
  out << line.dump() << "\n";
  if (!out.flush()) throw std::runtime_error("cannot append to '" + file.string() + "'");
}

// Every whole line of a JSON-lines file (one cut short by a kill is skipped), of `type` if given.
std::vector<nlohmann::json> read_lines(const fs::path& file, const std::string& type) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(file);
  for (std::string text; std::getline(in, text);) {
    if (text.empty()) continue;
    try {
      nlohmann::json j = nlohmann::json::parse(text);
      if (type.empty() || j.value("type", "") == type) lines.push_back(std::move(j));
    } catch (const nlohmann::json::exception&) {  // cut short by a kill, or being written
    }
  }
  return lines;
}
}  // namespace

void RunDir::append_metrics(const nlohmann::json& line) const {
  if (!empty()) append_line(metrics(), line);
}

std::vector<nlohmann::json> RunDir::read_metrics(const std::string& type) const { return read_lines(metrics(), type); }

void RunDir::append_segment(const nlohmann::json& line, bool fresh) const {
  if (empty()) return;
  if (fresh) fs::remove(segments());
  append_line(segments(), line);
}

std::vector<nlohmann::json> RunDir::read_segments() const { return read_lines(segments(), ""); }

std::optional<nlohmann::json> RunDir::last_epoch_metrics() const {
  auto epochs = read_metrics("epoch");
  if (epochs.empty()) return std::nullopt;
  return epochs.back();
}

void RunDir::trim_metrics(int64_t epochs) const {
  if (empty() || !fs::exists(metrics())) return;
  std::string kept;
  if (epochs > 0)
    for (const auto& j : read_metrics())
      if (j.value("epoch", epochs) < epochs) kept += j.dump() + "\n";
  write_file_atomic(metrics(), kept);
}

bool RunDir::has_checkpoint() const { return !empty() && fs::exists(checkpoint()); }

std::optional<int64_t> RunDir::checkpoint_epoch() const {
  if (!has_checkpoint()) return std::nullopt;
  torch::serialize::InputArchive archive;
  load_archive(checkpoint(), archive);
  torch::Tensor epoch;
  archive.read("epoch", epoch);
  return epoch.item<int64_t>();
}

void RunDir::write_outcome(const RunOutcome& o) const {
  if (empty()) return;
  create();
  write_file_atomic(outcome(),
                    nlohmann::json({{"status", to_string(o.status)}, {"message", o.message}}).dump(2) + "\n");
}

std::optional<RunOutcome> RunDir::read_outcome() const {
  std::ifstream in(outcome());
  if (!in) return std::nullopt;
  try {
    const auto j = nlohmann::json::parse(in);
    const std::optional<RunStatus> status = status_from_string(j.at("status"));
    if (!status) return std::nullopt;  // not one this code wrote: unreadable, as a torn file
    RunOutcome o;
    o.status = *status;
    o.message = j.value("message", "");
    return o;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

std::string RunDir::log_tail() const {
  std::ifstream in(log());
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last;
}

}  // namespace quest::runs
