#!/usr/bin/env python3
# Markdown table over several `quest bench --json` runs: per shape, kind and backend the median
# over runs of fused fwd and fwd+bwd GFLOP/s, the range of the same-run ratios to the composite
# and to sgemm, and the median over runs of those ratios.
# usage: results/bench/summarize_runs.py run1.json run2.json ...
import json, statistics as st, sys
runs = [json.load(open(p)) for p in sys.argv[1:]]
print("sgemm 1024^3 medians per run: " + ", ".join(f"{r['sgemm_gflops_median']:.0f}" for r in runs)
      + " GFLOP/s (best samples " + ", ".join(f"{max(r['sgemm_gflops_samples']):.0f}" for r in runs) + ")\n")
print("| B, H, N, D | kind | fused fwd | fused f+b | f+b / composite | fwd / sgemm | f+b / sgemm (runs) |")
print("|---|---|---|---|---|---|---|")
groups = {}
for r in runs:
    for row in r["rows"]:
        if row["backend"] == "fused":
            groups.setdefault((row["shape"], row["kind"]), []).append(row)
for (shape, kind), rows in groups.items():
    med = lambda k: st.median(x[k] for x in rows)
    span = lambda k: f"{min(x[k] for x in rows):.2f}–{max(x[k] for x in rows):.2f}"
    print(f"| {shape.replace(',', ', ')} | {kind} | {med('fwd_gflops'):.1f} | {med('fwd_bwd_gflops'):.1f} | "
          f"{med('fwd_bwd_vs_composite'):.2f} | {med('fwd_vs_sgemm'):.2f} | "
          f"**{med('fwd_bwd_vs_sgemm'):.2f}** ({span('fwd_bwd_vs_sgemm')}) |")
