// A model option with a few named values is an enum; its names are listed once, in a table that
// parsing (JSON, CLI flags) and printing both read, so a typo fails at parse time naming the choices.
#pragma once

#include <c10/util/Exception.h>

#include <array>
#include <string>
#include <utility>
#include <vector>

namespace quest::models {

template <class E, size_t N>
using OptionNames = std::array<std::pair<E, const char*>, N>;

template <class E, size_t N>
std::string name_of(const OptionNames<E, N>& names, E value) {
  for (const auto& [v, name] : names)
    if (v == value) return name;
  TORCH_CHECK(false, "quest::models: option value ", static_cast<int>(value), " has no name");
}

// Every name, in table order (for CLI11's IsMember and for messages).
template <class E, size_t N>
std::vector<std::string> names_of(const OptionNames<E, N>& names) {
  std::vector<std::string> out;
  for (const auto& entry : names) out.emplace_back(entry.second);
  return out;
}

// The value named `text`; otherwise an error naming the option (`what`) and its choices.
template <class E, size_t N>
E parse_option(const OptionNames<E, N>& names, const std::string& text, const char* what) {
  std::string choices;
  for (const auto& [value, name] : names) {
    if (text == name) return value;
    choices += (choices.empty() ? "" : ", ") + std::string(name);
  }
  TORCH_CHECK(false, "quest::models: unknown ", what, " '", text, "' (", choices, ")");
}

}  // namespace quest::models
