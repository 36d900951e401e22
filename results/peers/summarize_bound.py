#!/usr/bin/env python3
"""Bounds on bf16 / float32 of the fused forward + backward from products_bound.sh's CSV.

Each run's time T (FLOP / its GFLOP/s) is split into products P and the rest R by the shares of
its perf samples. Per round and shape (medians over rounds, ranges in brackets):
  measured      T32 / T16
  products      P32 / P16, how much faster the bf16 products are
  rest          R16 / R32, what the rest costs in bf16 against float32
  bound, ideal  T32 / (P32 / 2 + R32): products exactly twice as fast, the rest as float32's
  bound, as is  T32 / (P16 + R32): the bf16 products as measured, the rest as float32's
usage: summarize_bound.py bound.csv
"""
import csv
import statistics
import sys
from collections import defaultdict


def split(row):
    b, h, n, d = (int(x) for x in row["shape"].split(","))
    seconds = 14 * b * h * n * n * d / (float(row["gflops"]) * 1e9)  # one call
    products, rest = int(row["products"]), int(row["rest"])
    share = products / (products + rest)
    return seconds * share, seconds * (1 - share)


COLUMNS = {"round", "shape", "dtype", "gflops", "products", "rest"}


def main(path):
    runs = defaultdict(dict)  # (round, shape) -> dtype -> (P, R)
    reader = csv.DictReader(open(path))
    if missing := COLUMNS - set(reader.fieldnames or []):
        sys.exit(f"summarize_bound.py: {path} lacks the column(s) {', '.join(sorted(missing))} "
                 "(it reads products_bound.sh's CSV)")
    for row in reader:
        runs[(row["round"], row["shape"])][row["dtype"]] = split(row)
    by_shape = defaultdict(lambda: defaultdict(list))
    for (_, shape), got in runs.items():
        if set(got) != {"fp32", "bf16"}:
            continue
        (p32, r32), (p16, r16) = got["fp32"], got["bf16"]
        t32, t16 = p32 + r32, p16 + r16
        m = by_shape[shape]
        m["products share (fp32)"].append(p32 / t32)
        m["measured"].append(t32 / t16)
        m["products"].append(p32 / p16)
        m["rest"].append(r16 / r32)
        m["bound, ideal"].append(t32 / (p32 / 2 + r32))
        m["bound, as is"].append(t32 / (p16 + r32))
    cols = ["products share (fp32)", "measured", "products", "rest", "bound, ideal", "bound, as is"]
    print("| B, H, N, D | rounds | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for shape, m in by_shape.items():
        cells = [f"{statistics.median(m[c]):.2f} ({min(m[c]):.2f}–{max(m[c]):.2f})" for c in cols]
        print(f"| {shape.replace(',', ', ')} | {len(m['measured'])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
