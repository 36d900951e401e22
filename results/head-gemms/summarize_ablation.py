#!/usr/bin/env python3
"""Medians of ablation.sh's CSV per shape: microseconds per head of the full kernel and of its
parts (GEMMs = full - nogemm, rows = full - norows, fixed = neither), and the time OpenBLAS's bare
head GEMMs would take at the one-thread rate of runs-small.csv / runs.csv (the ceiling), if given.
usage: summarize_ablation.py ablation.csv [runs.csv ...]"""
import csv
import statistics
import sys
from collections import defaultdict

times = defaultdict(list)
for row in csv.DictReader(open(sys.argv[1])):
    times[(row["shape"], row["variant"])].append(float(row["us_per_head"]))
ceiling = defaultdict(list)  # one-thread head_gemms GFLOP/s per shape
for path in sys.argv[2:]:
    for row in csv.DictReader(open(path)):
        if row["what"] == "head_gemms" and row["threads"] == "1":
            ceiling[row["shape"]].append(float(row["gflops"]))
shapes = list(dict.fromkeys(s for s, _ in times))
print("| B, H, N, D | full µs/head | GEMMs | softmax rows | per-head fixed | rest | "
      "OpenBLAS head GEMMs µs/head | fixed + rows / ceiling |")
print("|---|---|---|---|---|---|---|---|")
for s in shapes:
    m = {v: statistics.median(times[(s, v)]) for v in ("full", "nogemm", "norows", "neither")}
    gemm, rows, fixed = m["full"] - m["nogemm"], m["full"] - m["norows"], m["neither"]
    rest = m["full"] - gemm - rows - fixed
    B, H, N, D = (int(x) for x in s.split(","))
    if ceiling[s]:
        c = 14 * N * N * D / (statistics.median(ceiling[s]) * 1e3)  # µs per head
        tail = f"{c:.1f} | {(fixed + rows) / c:.2f}"
    else:
        tail = "– | –"
    print(f"| {B}, {H}, {N}, {D} | {m['full']:.1f} | {gemm:.1f} ({gemm / m['full']:.0%}) | "
          f"{rows:.1f} ({rows / m['full']:.0%}) | {fixed:.1f} ({fixed / m['full']:.0%}) | "
          f"{rest:.1f} | {tail} |")
