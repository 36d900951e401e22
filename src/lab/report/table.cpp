#include "quest/lab/report/table.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <stdexcept>

namespace quest::report {

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? NAN : s / v.size();
}

double std_of(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / (v.size() - 1));
}

nlohmann::json mean_std(const std::vector<double>& v) { return {{"mean", mean_of(v)}, {"std", std_of(v)}}; }

Table::Table(std::vector<Column> columns) : columns_(std::move(columns)) {}

void Table::add_row(std::vector<nlohmann::json> cells) {
  if (cells.size() != columns_.size())
    throw std::invalid_argument("report::Table: a row of " + std::to_string(cells.size()) + " cells for " +
                                std::to_string(columns_.size()) + " columns");
  rows_.push_back(std::move(cells));
}

namespace {

bool is_mean_std(const nlohmann::json& c) { return c.is_object() && c.contains("mean") && c.contains("std"); }

double as_double(const nlohmann::json& c) { return c.is_null() ? NAN : c.get<double>(); }

std::string number(double v, int precision) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

std::string text(const nlohmann::json& c, const Column& col) {
  if (c.is_string()) return c.get<std::string>();
  if (c.is_boolean()) return c.get<bool>() ? "yes" : "no";
  if (c.is_number_integer() && col.scale == 1) return std::to_string(c.get<int64_t>());
  if (c.is_number()) return number(c.get<double>() * col.scale, col.precision);
  if (is_mean_std(c))
    return number(as_double(c["mean"]) * col.scale, col.precision) + " ± " +
           number(as_double(c["std"]) * col.scale, col.precision);
  return c.is_null() ? "-" : c.dump();
}

// Display width: "±" is one column but two bytes.
size_t width(const std::string& s) {
  size_t w = 0;
  for (unsigned char ch : s) w += (ch & 0xC0) != 0x80;
  return w;
}

std::string csv_field(const nlohmann::json& c) {
  if (c.is_string()) {
    const std::string s = c.get<std::string>();
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char ch : s) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
    return q + "\"";
  }
  if (c.is_boolean()) return c.get<bool>() ? "1" : "0";
  if (c.is_number_integer()) return std::to_string(c.get<int64_t>());
  if (c.is_number()) {
    std::ostringstream os;
    os << c.get<double>();
    return os.str();
  }
  return c.is_null() ? "" : c.dump();
}

}  // namespace

std::string Table::console() const {
  std::vector<std::vector<std::string>> cells;
  std::vector<size_t> widths;
  for (const auto& col : columns_) widths.push_back(width(col.name));
  for (const auto& row : rows_) {
    cells.emplace_back();
    for (size_t c = 0; c < columns_.size(); ++c) {
      cells.back().push_back(text(row[c], columns_[c]));
      widths[c] = std::max(widths[c], width(cells.back().back()));
    }
  }
  auto line = [&](const std::vector<std::string>& values) {
    std::string s;
    for (size_t c = 0; c < values.size(); ++c) {
      const std::string pad(widths[c] - width(values[c]), ' ');
      s += c == 0 ? values[c] + pad : "  " + pad + values[c];  // first column left, others right
    }
    return s + "\n";
  };
  std::vector<std::string> header;
  for (const auto& col : columns_) header.push_back(col.name);
  std::string out = line(header);
  for (const auto& row : cells) out += line(row);
  return out;
}

std::string Table::csv() const {
  // A column with any mean ± std cell becomes two; a plain number there fills the _mean one.
  std::vector<bool> pair(columns_.size(), false);
  for (const auto& row : rows_)
    for (size_t c = 0; c < columns_.size(); ++c) pair[c] = pair[c] || is_mean_std(row[c]);
  std::string out;
  for (size_t c = 0; c < columns_.size(); ++c)
    out += (c ? "," : "") + (pair[c] ? columns_[c].name + "_mean," + columns_[c].name + "_std" : columns_[c].name);
  out += "\n";
  for (const auto& row : rows_) {
    for (size_t c = 0; c < columns_.size(); ++c) {
      out += c ? "," : "";
      if (is_mean_std(row[c])) out += csv_field(row[c]["mean"]) + "," + csv_field(row[c]["std"]);
      else out += csv_field(row[c]) + (pair[c] ? "," : "");
    }
    out += "\n";
  }
  return out;
}

nlohmann::json Table::json() const {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& row : rows_) {
    nlohmann::json o = nlohmann::json::object();
    for (size_t c = 0; c < columns_.size(); ++c) o[columns_[c].name] = row[c];
    out.push_back(o);
  }
  return out;
}

}  // namespace quest::report
