// quest <command>: thin subcommands over the library.
#include <c10/util/Exception.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "commands.h"
#include "parallel.h"

// Threads: torch's wheel runs its intra-op pool and MKL on its own libgomp, which quest's kernels
// link too — one pool, left with libgomp's defaults. (On Debian's LibTorch 1.13 this binary
// re-executed itself with OpenBLAS's OpenMP build or a passive wait policy; with one pool passive
// waiting gained nothing: results/torch2/README.md.)

// A data-parallel rank's errors say whose they are (the collectives' own errors already do).
static std::string rank_prefix(const std::string& message) {
  const char* rank = std::getenv("RANK");
  if (!rank || !std::getenv("WORLD_SIZE") || message.find("data-parallel rank") != std::string::npos) return "";
  return std::string("rank ") + rank + ": ";
}

int main(int argc, char** argv) {
  quest::cli::program_args().assign(argv, argv + argc);
  CLI::App app{"quest: QUEST attention (query-modulated spherical attention) and its baselines"};
  app.require_subcommand(1);
  quest::cli::add_demo(app);
  quest::cli::add_info(app);
  quest::cli::add_bench(app);
  quest::cli::add_train(app);
  quest::cli::add_compare(app);
  quest::cli::add_lm(app);
  quest::cli::add_plot(app);
  quest::cli::add_robustness(app);
  quest::cli::add_experiment(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {  // unknown options, malformed values: CLI11's own message;
                                        // a command's exit_with(code): that code, nothing printed
    return app.exit(e);
  } catch (const c10::Error& e) {
    std::cerr << "error: " << rank_prefix(e.what_without_backtrace()) << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << rank_prefix(e.what()) << e.what() << "\n";
    return 1;
  }
  return 0;
}
