#!/usr/bin/python3
"""Markdown table of an LR sweep from its sweep.json (quest experiment lr-sweep's output): per size and
kind the LR sensitivity with its 95 % bootstrap interval, the best final validation loss and its rate,
diverged runs, and the seed-mean max attention |logit| and min entropy at the two highest rates.
usage: results/lr-sweep/table.py results/lr-sweep/vit/sweep.json"""
import json
import math
import statistics
import sys

s = json.load(open(sys.argv[1]))
runs = s["runs"]
lrs = sorted(s["sweep"]["lrs"])
top = lrs[-2:]


def seed_mean(size, kind, lr, key):
    v = [r[key] for r in runs if r["size"] == size and r["kind"] == kind and r["lr"] == lr
         and isinstance(r[key], (int, float)) and math.isfinite(r[key])]
    return statistics.mean(v) if v else float("nan")


head = " | ".join(f"max \\|logit\\| at {lr:g}" for lr in top) + " | " + \
       " | ".join(f"min entropy at {lr:g}" for lr in top)
print(f"| size | kind | LR sensitivity [95 % CI] | best val loss (lr) | diverged | {head} |")
print("|---|---|---|---|---|" + "---|" * (2 * len(top)))
for r in s["sensitivity"]:
    size, kind = r["size"], r["kind"]
    cells = [f"{seed_mean(size, kind, lr, 'logit_abs_max'):.0f}" for lr in top] + \
            [f"{seed_mean(size, kind, lr, 'entropy_min'):.2f}" for lr in top]
    print(f"| {size} | {kind} | {r['lr_sensitivity']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
          f"{r['best_val_loss']:.3f} ({r['best_lr']:g}) | {r['diverged']}/{r['runs']} | " +
          " | ".join(c.replace("-0.00", "0.00") for c in cells) + " |")
