// A run directory: the one place that names and reads the files of a training run.
//   config.json    the resolved config the run trains with (a valid --config file)
//   metrics.jsonl  one JSON object per line: {"type": "step", ...} and {"type": "epoch", ...}
//   checkpoint.pt  model, optimiser, epoch, step (written atomically after each epoch)
//   result.json    the test metrics of a finished `quest train`
//   outcome.json   how the run ended (ok / diverged / failed, with a message), for whoever
//                  started it, e.g. `quest compare --workers` reading its child processes
//   train.log      stdout and stderr of a run trained in a child process
#pragma once

#include <nlohmann/json.hpp>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace quest::runs {

enum class RunStatus { ok, diverged, failed };
std::string to_string(RunStatus status);
// The status to_string names; nullopt for any other string.
std::optional<RunStatus> status_from_string(const std::string& name);

struct RunOutcome {
  RunStatus status = RunStatus::ok;
  std::string message;  // the divergence or error, "" when ok
};

class RunDir {
 public:
  RunDir() = default;  // no directory: a run that writes nothing
  explicit RunDir(std::filesystem::path root);

  bool empty() const { return root_.empty(); }
  const std::filesystem::path& root() const { return root_; }
  std::filesystem::path config() const { return root_ / "config.json"; }
  std::filesystem::path metrics() const { return root_ / "metrics.jsonl"; }
  std::filesystem::path checkpoint() const { return root_ / "checkpoint.pt"; }
  std::filesystem::path result() const { return root_ / "result.json"; }
  std::filesystem::path outcome() const { return root_ / "outcome.json"; }
  std::filesystem::path log() const { return root_ / "train.log"; }
  // One line per training segment (a fresh start, then each resume): what it ran on (parameters,
  // SIMD target, threads, world size, torch). Apart from metrics.jsonl, which stays one run's steps
  // whether or not it was resumed.
  std::filesystem::path segments() const { return root_ / "segments.jsonl"; }

  void create() const;
  void write_config(const nlohmann::json& config) const;
  // Throws std::runtime_error naming the file when it is missing or not JSON.
  nlohmann::json read_config() const;
  void write_result(const nlohmann::json& result) const;

  void append_metrics(const nlohmann::json& line) const;
  // Every whole line of metrics.jsonl (a line cut short by a kill is skipped); only lines of
  // `type` ("step" or "epoch") when given.
  std::vector<nlohmann::json> read_metrics(const std::string& type = "") const;
  std::optional<nlohmann::json> last_epoch_metrics() const;
  // Keeps only lines of epochs < epochs (those a checkpoint holds), so a resumed or restarted run
  // never logs a step twice. Atomic (temp file + rename).
  void trim_metrics(int64_t epochs) const;
  // fresh: the run starts over (earlier segments are dropped).
  void append_segment(const nlohmann::json& line, bool fresh) const;
  std::vector<nlohmann::json> read_segments() const;

  bool has_checkpoint() const;
  // Epochs the checkpoint holds (read from the archive, no model built); nullopt without one.
  std::optional<int64_t> checkpoint_epoch() const;

  void write_outcome(const RunOutcome& outcome) const;
  std::optional<RunOutcome> read_outcome() const;
  // The last non-empty line of train.log ("" without one).
  std::string log_tail() const;

 private:
  std::filesystem::path root_;
};

// Writes `text` to path through a temp file and a rename: readers see the old or the new file.
void write_file_atomic(const std::filesystem::path& path, const std::string& text);

// The checkpoint file format: "QUESTCK1", the archive's byte count and CRC-32 (8 + 4 bytes,
// little-endian), then LibTorch's archive. The check runs before LibTorch parses anything: a
// corrupt or truncated file is rejected (LibTorch 1.13's archive reader can crash on damaged
// input). Files written before this format (a bare LibTorch archive) are loaded unchecked.
// save_archive writes `path` as is (callers rename a temp file into place); both throw
// std::runtime_error naming the file.
void save_archive(const std::filesystem::path& path, torch::serialize::OutputArchive& archive);
void load_archive(const std::filesystem::path& path, torch::serialize::InputArchive& archive);
// The same check and load on a file's bytes already read (read_archive_file), e.g. a checkpoint
// rank 0 of a data-parallel run shared; `path` names it in errors.
std::string read_archive_file(const std::filesystem::path& path);
void load_archive_bytes(const std::string& file, const std::filesystem::path& path,
                        torch::serialize::InputArchive& archive);

}  // namespace quest::runs
