#!/usr/bin/python3
"""Where a scale sweep stands, from its record alone (record.jsonl: one line per ended run), while it
is still running: per size and kind the runs ended, the diverged ones, and — once every rate has
every seed — the LR sensitivity as `quest experiment lr-sweep` defines it (mean over the rates of
the seed-mean final validation loss capped at the initial loss, minus the best rate's; no interval:
the sweep's own output has the bootstrap) and the seed-mean max |logit| at the highest rate.
usage: results/lr-sweep-scale/interim.py results/lr-sweep-scale/vit/record.jsonl [expected seeds per size, e.g. s1=2,s3=3]"""
import json
import math
import statistics
import sys
from collections import defaultdict

# A run recorded twice (the fingerprint migration of 2026-12-04 wrote every line again): the last line.
latest = {}
for line in open(sys.argv[1]):
    if line.strip():
        r = json.loads(line)
        latest[(r["size"], r["kind"], r["lr"], r["seed"])] = r
runs = list(latest.values())
want = {k: int(v) for k, v in (x.split("=") for x in sys.argv[2].split(","))} if len(sys.argv) > 2 else {}
lrs = sorted({r["lr"] for r in runs})
cells = defaultdict(list)
for r in runs:
    cells[(r["size"], r["kind"])].append(r)
print("| size | kind | parameters | runs | diverged | LR sensitivity | best val loss (lr) | max \\|logit\\| at lr %g |" % lrs[-1])
print("|---|---|---|---|---|---|---|---|")
for (size, kind), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[1][0]["parameters"], kv[0][1])):
    by_lr = defaultdict(list)
    for r in rs:
        loss = r["final_val_loss"] if r["status"] == "ok" and isinstance(r["final_val_loss"], float) else math.inf
        by_lr[r["lr"]].append(min(loss, r["init_loss"]))
    seeds = want.get(size, max(len(v) for v in by_lr.values()))
    complete = len(by_lr) == len(lrs) and all(len(v) >= seeds for v in by_lr.values())
    sens, best = "running", ""
    if complete:
        means = {lr: statistics.mean(v) for lr, v in by_lr.items()}
        best_lr = min(means, key=means.get)
        sens = f"{statistics.mean(means.values()) - means[best_lr]:.4f}"
        best = f"{means[best_lr]:.3f} ({best_lr:g})"
    top = [r["logit_abs_max"] for r in rs if r["lr"] == lrs[-1] and isinstance(r["logit_abs_max"], float)]
    logit = f"{statistics.mean(top):.0f}" if top else "—"
    print(f"| {size} | {kind} | {rs[0]['parameters']} | {len(rs)} | {sum(r['status'] == 'diverged' for r in rs)} | "
          f"{sens} | {best} | {logit} |")

# The logit monitor: per size and kind, the runs whose monitor warned, the lowest rate that warned
# and the earliest step of a first warning (warned_step).
print()
print("| size | kind | runs | monitor warned | lowest lr warned | earliest first warning (step) |")
print("|---|---|---|---|---|---|")
for (size, kind), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[1][0]["parameters"], kv[0][1])):
    warned = [r for r in rs if r.get("warned_step") is not None]
    lowest = f"{min(r['lr'] for r in warned):g}" if warned else "—"
    earliest = str(min(r["warned_step"] for r in warned)) if warned else "—"
    print(f"| {size} | {kind} | {len(rs)} | {len(warned)} | {lowest} | {earliest} |")
