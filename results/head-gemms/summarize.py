#!/usr/bin/env python3
"""Medians over the rounds of results/head-gemms/measure.sh's CSV: per shape and thread count,
OpenBLAS's head GEMMs and the fused kernel's forward + backward in GFLOP/s, each over the sgemm
1024^3 of its round (the head_gemms process's median), and fused over head GEMMs per round."""
import csv
import statistics
import sys
from collections import defaultdict

rows = list(csv.DictReader(open(sys.argv[1])))
by = defaultdict(dict)  # (shape, threads) -> round -> {what: (gflops, sgemm)}
for r in rows:
    by[(r["shape"], int(r["threads"]))].setdefault(r["round"], {})[r["what"]] = (
        float(r["gflops"]), float(r["sgemm_gflops"]) if r["sgemm_gflops"] else None)
med = statistics.median
print("| B, H, N, D | threads | sgemm 1024³ | head GEMMs (OpenBLAS) | fused f+b | head GEMMs / sgemm "
      "| fused f+b / sgemm | fused / head GEMMs |")
print("|---|---|---|---|---|---|---|---|")
for (shape, t), rounds in by.items():
    ok = [x for x in rounds.values() if "fused" in x and "head_gemms" in x]
    sg = [x["head_gemms"][1] for x in ok]
    hg = [x["head_gemms"][0] for x in ok]
    fu = [x["fused"][0] for x in ok]
    rh = [x["head_gemms"][0] / x["head_gemms"][1] for x in ok]
    rf = [x["fused"][0] / x["head_gemms"][1] for x in ok]
    rr = [x["fused"][0] / x["head_gemms"][0] for x in ok]
    rng = lambda v: f"{med(v):.2f} ({min(v):.2f}–{max(v):.2f})"
    print(f"| {shape.replace(',', ', ')} | {t} | {med(sg):.0f} | {med(hg):.1f} | {med(fu):.1f} | "
          f"{rng(rh)} | {rng(rf)} | {rng(rr)} |")
