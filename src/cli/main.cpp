// quest <command>: thin subcommands over the library.
#include <c10/util/Exception.h>

#include <iostream>

#include "commands.h"
#include "quest/runtime.h"

int main(int argc, char** argv) {
  CLI::App app{"quest: QUEST attention (query-modulated spherical attention) and its baselines"};
  app.require_subcommand(1);
  quest::cli::add_demo(app);
  quest::cli::add_info(app);
  quest::cli::add_bench(app);
  int exit_code = 0;
  quest::cli::add_train(app, exit_code);
  quest::cli::add_plot(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return exit_code;
}
