#!/usr/bin/python3
"""The verdict's table of one task, from the sweep's own sensitivity.csv (written by
`quest experiment lr-sweep`, copied here by results/lr-sweep/collect.sh): per kind, the LR
sensitivity with its bootstrap 95 % interval at every size, then at the largest size the best
seed-mean validation loss (its rate) and the seed-mean max |logit| at the highest rate.
(results/lr-sweep/table.py prints one row per size and kind from a sweep.json; this one puts the
sizes side by side, the verdict's question, and reads the CSV that interim-s1-s3/ keeps.)
With the sweep's runs.csv as a second argument it also prints, at the largest size, every kind's
seed-mean final validation loss at every rate (the loss-vs-LR curve the sensitivity averages).
usage: results/lr-sweep-scale/table.py results/lr-sweep-scale/vit/sensitivity.csv [.../vit/runs.csv]"""
import collections
import csv
import statistics
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
params = {}
for r in rows:
    params.setdefault(r["size"], int(r["parameters"]))
sizes = sorted(params, key=params.get)  # smallest first (each size's first kind's count: qk_layernorm's LayerNorm gains add a few)
kinds = list(dict.fromkeys(r["kind"] for r in rows))  # the sweep's own order: five kinds, then the fixes
cell = {(r["size"], r["kind"]): r for r in rows}
last = sizes[-1]


def count(x):  # 192788 -> "192 788", as the README writes large numbers
    return f"{round(x):,}".replace(",", " ")


print("| kind | " + " | ".join(f"{s} ({count(params[s])})" for s in sizes) +
      f" | {last} best loss (lr) | {last} max \\|logit\\| at lr {cell[(last, kinds[0])]['stable_lr']} |")
print("|---|" + "---|" * (len(sizes) + 2))
for k in kinds:
    out = []
    for s in sizes:
        r = cell.get((s, k))
        out.append("—" if r is None else
                   f"{float(r['lr_sensitivity']):.3f} [{float(r['ci_low']):.3f}, {float(r['ci_high']):.3f}]")
    r = cell.get((last, k))
    if r is None:
        out += ["—", "—"]
    else:
        diverged = f", {r['diverged']} diverged" if int(r["diverged"]) else ""
        out += [f"{float(r['best_val_loss']):.3f} ({float(r['best_lr']):g}){diverged}",
                count(float(r["stable_logit_abs_max"]))]
    print(f"| {k} | " + " | ".join(out) + " |")

if len(sys.argv) > 2:  # the largest size's loss against rate, seed means
    losses = collections.defaultdict(list)
    for r in csv.DictReader(open(sys.argv[2])):
        if r["size"] == last:
            losses[(r["kind"], float(r["lr"]))].append(float(r["final_val_loss"]))
    rates = sorted({lr for _, lr in losses})
    print(f"\n| {last}: kind | " + " | ".join(f"{lr:g}" for lr in rates) + " |")
    print("|---|" + "---|" * len(rates))
    for k in kinds:
        print(f"| {k} | " + " | ".join(f"{statistics.mean(losses[(k, lr)]):.3f}" if (k, lr) in losses else "—"
                                        for lr in rates) + " |")
