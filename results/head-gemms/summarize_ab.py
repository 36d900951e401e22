#!/usr/bin/env python3
"""Medians of ab.sh's CSV per shape: GFLOP/s of each commit and the per-round ratio second / first
commit (the order in which the commits first appear: BASE, then HEAD). usage: summarize_ab.py ab.csv"""
import csv
import statistics
import sys
from collections import defaultdict

rate = defaultdict(dict)  # (shape, round) -> commit -> GFLOP/s
commits = []
for row in csv.DictReader(open(sys.argv[1])):
    rate[(row["shape"], row["round"])][row["commit"]] = float(row["gflops"])
    if row["commit"] not in commits:
        commits.append(row["commit"])
base, head = commits
shapes = list(dict.fromkeys(s for s, _ in rate))
print(f"| B, H, N, D | {base} GFLOP/s | {head} GFLOP/s | {head} / {base} (median, range) |")
print("|---|---|---|---|")
for s in shapes:
    rounds = [v for (sh, _), v in rate.items() if sh == s]
    a = [x[base] for x in rounds]
    b = [x[head] for x in rounds]
    r = [x[head] / x[base] for x in rounds]
    print(f"| {s.replace(',', ', ')} | {statistics.median(a):.1f} | {statistics.median(b):.1f} | "
          f"{statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f}) |")
