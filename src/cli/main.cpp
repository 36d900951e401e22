// quest <command>: thin subcommands over the library.
#include <c10/util/Exception.h>

#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "commands.h"
#include "parallel.h"
#include "quest/torch/runtime.h"

// libgomp and OpenBLAS's thread pool read their idle policies once, when they load (before
// main), and their defaults spin (libgomp) and sched_yield (OpenBLAS) for a long time after each
// parallel region. On a 2-core machine the two pools then steal each other's cores: training a
// ViT ran at 101 img/s by default and 169 img/s with these two settings (measured, see README).
// So unless the user chose, set them and re-execute this binary once.
static void use_sleeping_thread_pools(char** argv) {
  if (std::getenv("QUEST_THREAD_POOLS_SET")) return;
  setenv("QUEST_THREAD_POOLS_SET", "1", 1);
  bool changed = false;
  for (const auto& [name, value] : {std::pair{"OMP_WAIT_POLICY", "passive"},
                                    std::pair{"OPENBLAS_THREAD_TIMEOUT", "4"}}) {
    if (std::getenv(name)) continue;
    setenv(name, value, 1);
    changed = true;
  }
  if (changed) execv("/proc/self/exe", argv);  // on failure: carry on with the defaults
}

// A data-parallel rank's errors say whose they are (the collectives' own errors already do).
static std::string rank_prefix(const std::string& message) {
  const char* rank = std::getenv("RANK");
  if (!rank || !std::getenv("WORLD_SIZE") || message.find("data-parallel rank") != std::string::npos) return "";
  return std::string("rank ") + rank + ": ";
}

int main(int argc, char** argv) {
  use_sleeping_thread_pools(argv);
  quest::cli::program_args().assign(argv, argv + argc);
  CLI::App app{"quest: QUEST attention (query-modulated spherical attention) and its baselines"};
  app.require_subcommand(1);
  quest::cli::add_demo(app);
  quest::cli::add_info(app);
  quest::cli::add_bench(app);
  int exit_code = 0;
  quest::cli::add_train(app, exit_code);
  quest::cli::add_compare(app, exit_code);
  quest::cli::add_lm(app, exit_code);
  quest::cli::add_plot(app);
  quest::cli::add_robustness(app);
  quest::cli::add_experiment(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {  // unknown options, malformed values: CLI11's own message
    return app.exit(e);
  } catch (const c10::Error& e) {
    std::cerr << "error: " << rank_prefix(e.what_without_backtrace()) << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << rank_prefix(e.what()) << e.what() << "\n";
    return 1;
  }
  return exit_code;
}
