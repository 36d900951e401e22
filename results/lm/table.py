#!/usr/bin/python3
"""Markdown tables of an LM comparison from its compare.json (quest lm compare's output):
per kind mean ± sample std over seeds, and each kind's difference to standard attention paired by
seed (the same seed gives every kind the same data order and initial draws, so the paired
difference removes the seed's share of the spread).
usage: results/lm/table.py results/lm/compare.json"""
import json
import statistics
import sys

c = json.load(open(sys.argv[1]))
runs = c["runs"]
by = {(r["kind"], r["seed"]): r for r in runs}
kinds = [s["kind"] for s in c["summary"]]
seeds = sorted({r["seed"] for r in runs})


def mean_std(v):
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


print("| kind | test bits per byte (mean ± std) | − standard, paired by seed | final max ‖q‖ | "
      "final max ‖k‖ | final max \\|logit\\| | mean entropy (nats) |")
print("|---|---|---|---|---|---|---|")
for s in c["summary"]:
    k = s["kind"]
    m, sd = mean_std([by[(k, x)]["test_bits_per_byte"] for x in seeds if (k, x) in by])
    d = [by[(k, x)]["test_bits_per_byte"] - by[("standard", x)]["test_bits_per_byte"]
         for x in seeds if (k, x) in by and ("standard", x) in by]
    dm, dsd = mean_std(d) if d else (float("nan"), 0.0)
    diff = "—" if k == "standard" else f"{dm:+.4f} ± {dsd:.4f}"
    print(f"| {k} | {m:.4f} ± {sd:.4f} | {diff} | {s['q_norm_max']:.2f} | {s['k_norm_max']:.2f} | "
          f"{s['logit_abs_max']:.2f} | {s['entropy_mean']:.3f} |")
print()
print("| seed | " + " | ".join(kinds) + " |")
print("|---|" + "---|" * len(kinds))
for x in seeds:
    print(f"| {x} | " + " | ".join(f"{by[(k, x)]['test_bits_per_byte']:.4f}" if (k, x) in by else "—"
                                   for k in kinds) + " |")
