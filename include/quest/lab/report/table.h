// A results table, rendered three ways from the same rows: aligned text for the console, CSV and
// JSON. A cell is a JSON value: a number, a string, or {"mean": m, "std": s} (printed "m ± s" on
// the console, two CSV columns <name>_mean and <name>_std).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace quest::report {

struct Column {
  std::string name;      // CSV / JSON key and console header
  int precision = 3;     // console decimals for numbers
  double scale = 1;      // console only: 100 prints fractions as percent
};

class Table {
 public:
  explicit Table(std::vector<Column> columns);
  void add_row(std::vector<nlohmann::json> cells);  // one cell per column

  std::string console() const;
  std::string csv() const;
  nlohmann::json json() const;  // array of {column name: cell}
  size_t rows() const { return rows_.size(); }

 private:
  std::vector<Column> columns_;
  std::vector<std::vector<nlohmann::json>> rows_;
};

// Mean and sample standard deviation (0 for one value; NaN mean for none).
double mean_of(const std::vector<double>& v);
double std_of(const std::vector<double>& v);
// {"mean": mean_of(v), "std": std_of(v)}, the cell type for a value over seeds.
nlohmann::json mean_std(const std::vector<double>& v);

}  // namespace quest::report
