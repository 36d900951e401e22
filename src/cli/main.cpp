// quest <command>: thin subcommands over the library.
#include <c10/util/Exception.h>

#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "commands.h"
#include "parallel.h"
#include "quest/torch/runtime.h"

// Threads. libgomp's pool runs torch's parallel ops and quest's kernels; OpenBLAS built for
// pthreads (Debian's default) keeps a second pool for the matrix products. Two pools on few cores
// steal each other's time. Where Debian's OpenMP build of OpenBLAS is installed beside it
// (libopenblas0-openmp, which scripts/setup.sh installs), quest loads that instead: one pool, left
// with libgomp's default spin-then-sleep (ViT training on configs/full.json ~1.27x faster than two
// pools, results/training-step). Otherwise both pools are told to sleep when idle: libgomp's and
// OpenBLAS's defaults spin and sched_yield for a long time after each parallel region (a ViT ran
// at 101 img/s by default and 169 img/s with the two settings, results/bench). Both libraries read
// these variables when they load, before main: so unless the user chose (LD_LIBRARY_PATH, the
// policies, or QUEST_THREAD_POOLS_SET), set them and re-execute this binary once.
static void configure_thread_pools(char** argv) {
  if (std::getenv("QUEST_THREAD_POOLS_SET")) return;
  setenv("QUEST_THREAD_POOLS_SET", "1", 1);
  const char* library_path = std::getenv("LD_LIBRARY_PATH");
  const std::string one_pool =
      library_path && *library_path ? "" : quest::openmp_openblas_dir(quest::detect_blas());
  std::vector<std::pair<const char*, std::string>> wanted;
  if (!one_pool.empty()) wanted = {{"LD_LIBRARY_PATH", one_pool}};
  else wanted = {{"OMP_WAIT_POLICY", "passive"}, {"OPENBLAS_THREAD_TIMEOUT", "4"}};
  bool changed = false;
  for (const auto& [name, value] : wanted) {
    if (const char* set = std::getenv(name); set && *set) continue;
    setenv(name, value.c_str(), 1);
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
  configure_thread_pools(argv);
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
