// gnuplot from the CLI: quoting for its scripts, and running a script written to disk.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace quest::cli {

// A gnuplot single-quoted string ('' escapes a quote).
inline std::string gnuplot_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += (c == '\'') ? std::string("''") : std::string(1, c);
  return out + "'";
}

// Writes `script` to `path` and runs gnuplot on it; throws if gnuplot fails.
inline void run_gnuplot(const std::filesystem::path& path, const std::string& script) {
  std::ofstream(path) << script;
  const std::string cmd = "gnuplot " + gnuplot_quote(path.string());
  if (std::system(cmd.c_str()) != 0)
    throw std::runtime_error("gnuplot failed on " + path.string() + " (is gnuplot-nox installed?)");
}

// The PNG terminal every quest plot uses.
inline const char* kGnuplotHeader =
    "set terminal pngcairo size 1400,900 font ',10' noenhanced\nset key outside right\nset grid\n";

}  // namespace quest::cli
