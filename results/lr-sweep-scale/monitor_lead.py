#!/usr/bin/python3
"""How many steps the logit monitor's first warning came before the loss degraded (issue #36's
third question), from <task>/curves.csv and <task>/record.jsonl alone.

"Degraded" (no run has diverged, so it cannot mean divergence): a run at a rate above its kind's
best rate (the best seed-mean final validation loss at that size) degrades at the first logged step
from which its training loss — a moving mean over 5 logged steps (50 steps) — stays more than
0.1 nats above that of the best rate's run with the same seed, at every later logged step. The
lead is degraded step − first warning step: positive, the monitor warned first.
(A simpler definition — the loss rising 0.1 above its own running minimum — marks every LM run,
low rates included: the LM's per-batch loss is that noisy.)
usage: results/lr-sweep-scale/monitor_lead.py <task> [size,...]"""
import collections
import csv
import json
import statistics
import sys

task = sys.argv[1]
sizes = sys.argv[2].split(",") if len(sys.argv) > 2 else None
root = f"results/lr-sweep-scale/{task}"
curves = collections.defaultdict(dict)  # (size, kind, seed) -> lr -> [(step, loss, warned)]
for r in csv.DictReader(open(f"{root}/curves.csv")):
    curves[(r["size"], r["kind"], int(r["seed"]))].setdefault(float(r["lr"]), []).append(
        (int(r["step"]), float(r["loss"]), int(r["warned"])))
finals = collections.defaultdict(lambda: collections.defaultdict(list))  # (size, kind) -> lr -> losses
latest = {}
for line in open(f"{root}/record.jsonl"):
    j = json.loads(line)
    latest[(j["size"], j["kind"], float(j["lr"]), int(j["seed"]))] = j
for (size, kind, lr, _), j in latest.items():
    if j["status"] == "ok" and isinstance(j["final_val_loss"], float):
        finals[(size, kind)][lr].append(j["final_val_loss"])
best = {sk: min(by_lr, key=lambda lr: statistics.mean(by_lr[lr])) for sk, by_lr in finals.items()}


def moving_mean(rows, k=5):
    rows = sorted(rows)
    loss = [l for _, l, _ in rows]
    return {s: statistics.mean(loss[max(0, i - k + 1):i + 1]) for i, (s, _, _) in enumerate(rows)}


cells = collections.defaultdict(list)
for (size, kind, seed), by_lr in curves.items():
    b = best.get((size, kind))
    if b is None or b not in by_lr or (sizes and size not in sizes):
        continue
    ref = moving_mean(by_lr[b])
    for lr, rows in by_lr.items():
        if lr <= b:
            continue
        mm = moving_mean(rows)
        steps = [s for s in sorted(mm) if s in ref]
        gaps = [mm[s] - ref[s] for s in steps]
        degraded = next((s for i, s in enumerate(steps) if all(g > 0.1 for g in gaps[i:])), None)
        warned = next((s for s, _, w in sorted(rows) if w), None)
        cells[(size, kind)].append((warned, degraded))

print(f"| size | kind | best lr | runs above it | warned | degraded | both | lead: median (range), steps |")
print("|---|---|---|---|---|---|---|---|")
for (size, kind), v in sorted(cells.items()):
    both = [d - w for w, d in v if w is not None and d is not None]
    lead = f"{statistics.median(both):g} ({min(both)}..{max(both)})" if both else "—"
    print(f"| {size} | {kind} | {best[(size, kind)]:g} | {len(v)} | {sum(w is not None for w, _ in v)} | "
          f"{sum(d is not None for _, d in v)} | {len(both)} | {lead} |")
