#include "checkpoint.h"

#include <filesystem>
#include <functional>
#include <utility>
#include <vector>

#include "fault_points.h"
#include "quest/lab/runs/run_dir.h"
#include "quest/lab/training/engine.h"
#include "quest/torch/runtime.h"

namespace quest::training {

namespace fs = std::filesystem;

void write_checkpoint(const std::string& path, Task& task, torch::optim::Optimizer& optimizer,
                      const CheckpointProgress& progress) {
  torch::serialize::OutputArchive archive;
  task.model().save(archive);
  torch::serialize::OutputArchive optim;
  optimizer.save(optim);
  archive.write("optimizer", optim);
  archive.write("format", torch::tensor(kCheckpointFormat));
  archive.write("epoch", torch::tensor(progress.epoch));
  archive.write("step", torch::tensor(progress.step));
  archive.write("train_seconds", torch::tensor(progress.train_seconds, torch::kDouble));
  task.save_extra(archive);
  const std::string tmp = path + ".tmp";
  try {
    runs::save_archive(tmp, archive);
  } catch (const std::exception& e) {  // a full disk, a read-only directory: the old checkpoint stays
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw std::runtime_error("quest::training: cannot write checkpoint '" + tmp + "' (" +
                             error_message(e) + "); the previous checkpoint '" +
                             path + "' is unchanged");
  }
  FaultSite site;
  site.epoch = progress.epoch;
  site.file = tmp;
  fault_point(FaultPoint::checkpoint_written, site);
  fs::rename(tmp, path);  // atomic on POSIX: the old checkpoint stays until the new one is whole
}

CheckpointProgress read_checkpoint(const std::string& bytes, const std::string& path, Task& task,
                                   torch::optim::Optimizer& optimizer) {
  struct CheckpointError : std::runtime_error {
    using std::runtime_error::runtime_error;
  };
  auto fail = [&](const std::string& why) {
    throw CheckpointError("quest::training: checkpoint '" + path + "' cannot be loaded: " + why);
  };
  torch::serialize::InputArchive archive, optim;
  torch::Tensor format, epoch, step, seconds;  // read() needs a fresh tensor for each entry
  bool complete = false;
  try {  // LibTorch's archive reader throws c10::Error, torch::jit errors and std::runtime_error
    runs::load_archive_bytes(bytes, path, archive);
    complete = archive.try_read("epoch", epoch) && archive.try_read("step", step) &&
               archive.try_read("optimizer", optim);
  } catch (const std::exception& e) {
    fail("corrupt or truncated (" + error_message(e) + ")");
  }
  if (!complete) fail("it has no epoch, step or optimizer state (not a quest checkpoint?)");
  const int64_t version = archive.try_read("format", format) ? format.item<int64_t>() : 1;
  if (version > kCheckpointFormat)
    fail("it has format " + std::to_string(version) + ", newer than this build reads (up to " +
         std::to_string(kCheckpointFormat) + "); use the quest that wrote it");
  // Nothing is half-loaded: every tensor is read and checked before the first is copied, and the
  // optimiser state goes into the caller's fresh optimiser.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> model_tensors;  // (model's, checkpoint's)
  std::function<void(torch::serialize::InputArchive&, torch::nn::Module&, const std::string&)> read =
      [&](torch::serialize::InputArchive& in, torch::nn::Module& module, const std::string& prefix) {
        auto take = [&](const std::string& name, const torch::Tensor& mine, bool is_buffer) {
          torch::Tensor theirs;
          if (!in.try_read(name, theirs, is_buffer)) fail("it has no '" + prefix + name + "'");
          if (theirs.sizes() != mine.sizes())
            fail("'" + prefix + name + "' has shape " + c10::str(theirs.sizes()) + " there, " +
                 c10::str(mine.sizes()) + " in this model");
          model_tensors.emplace_back(mine, theirs);
        };
        for (const auto& p : module.named_parameters(/*recurse=*/false)) take(p.key(), p.value(), false);
        for (const auto& b : module.named_buffers(/*recurse=*/false)) take(b.key(), b.value(), true);
        for (const auto& child : module.named_children()) {
          torch::serialize::InputArchive sub;
          if (!in.try_read(child.key(), sub)) {
            // LibTorch's archive drops a child without state (a ReLU in a Sequential stem).
            if (child.value()->parameters().empty() && child.value()->buffers().empty()) continue;
            fail("it has no '" + prefix + child.key() + "'");
          }
          read(sub, *child.value(), prefix + child.key() + ".");
        }
      };
  std::string misfit;
  try {
    read(archive, task.model(), "");
    optimizer.load(optim);
    task.load_extra(archive);
  } catch (const c10::Error& e) {
    misfit = e.what_without_backtrace();
  } catch (const CheckpointError&) {  // ours, from read(): already names the file
    throw;
  } catch (const std::exception& e) {
    misfit = e.what();
  }
  if (!misfit.empty()) fail("it does not fit this model (" + misfit + ")");
  torch::NoGradGuard no_grad;
  for (auto& [mine, theirs] : model_tensors) mine.copy_(theirs);
  return {epoch.item<int64_t>(), step.item<int64_t>(),
          archive.try_read("train_seconds", seconds) ? seconds.item<double>() : NAN};
}

}  // namespace quest::training
