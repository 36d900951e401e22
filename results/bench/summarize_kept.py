#!/usr/bin/env python3
# Markdown table of `quest bench` runs with and without --keep-freed-memory: per shape and kind the
# median over runs of composite and fused fwd+bwd GFLOP/s, and of the same-run fused / composite
# ratio (with its range), plus each run's minor page faults.
# usage: results/bench/summarize_kept.py "off1.json off2.json ..." "on1.json on2.json ..."
import json, statistics as st, sys
sets = {name: [json.load(open(p)) for p in paths.split()] for name, paths in zip(("default", "kept"), sys.argv[1:3])}
for name, runs in sets.items():
    print(f"{name}: minor page faults per run " + ", ".join(f"{r['minor_faults'] / 1e6:.1f} M" for r in runs)
          + "; sgemm medians " + ", ".join(f"{r['sgemm_gflops_median']:.0f}" for r in runs) + " GFLOP/s")
print()
print("| B, H, N, D | kind | composite f+b, default → kept | fused f+b, default → kept "
      "| fused / composite f+b, default (runs) | fused / composite f+b, kept (runs) |")
print("|---|---|---|---|---|---|")
def rows(runs, backend):
    out = {}
    for r in runs:
        for row in r["rows"]:
            if row["backend"] == backend:
                out.setdefault((row["shape"], row["kind"]), []).append(row)
    return out
fused = {n: rows(r, "fused") for n, r in sets.items()}
comp = {n: rows(r, "composite") for n, r in sets.items()}
for key in fused["default"]:
    med = lambda rs, k: st.median(x[k] for x in rs)
    span = lambda rs, k: f"{min(x[k] for x in rs):.2f}–{max(x[k] for x in rs):.2f}"
    cells = []
    for n in ("default", "kept"):
        cells.append(f"**{med(fused[n][key], 'fwd_bwd_vs_composite'):.2f}** ({span(fused[n][key], 'fwd_bwd_vs_composite')})")
    print(f"| {key[0].replace(',', ', ')} | {key[1]} | {med(comp['default'][key], 'fwd_bwd_gflops'):.1f} → "
          f"{med(comp['kept'][key], 'fwd_bwd_gflops'):.1f} | {med(fused['default'][key], 'fwd_bwd_gflops'):.1f} → "
          f"{med(fused['kept'][key], 'fwd_bwd_gflops'):.1f} | {cells[0]} | {cells[1]} |")
