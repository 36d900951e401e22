// quest compare: flags -> the ViT's config -> compare_kinds (plan, train, score, table, files, plots).
#include "commands.h"
#include "train_flags.h"

namespace quest::cli {

void add_compare(CLI::App& app) {
  auto f = std::make_shared<TrainFlags>();
  auto compare = std::make_shared<CompareFlags>();
  CLI::App* cmd = app.add_subcommand(
      "compare", "Train every requested attention kind on the same seeds and data; table of test accuracy");
  add_training_flags(cmd, f);
  add_compare_flags(cmd, compare);
  cmd->callback([f, compare] {
    compare_kinds("quest compare", resolve_task_config(*f->config, tasks::task_kind("vit")), f->resume, *compare);
  });
}

}  // namespace quest::cli
