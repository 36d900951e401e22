#!/usr/bin/python3
"""Every logged training step of every finished run of the scale sweep, from the run directories
(runs/lr-sweep-scale/<task>/<size>/lr-<lr>/<kind>/seed-<s>/metrics.jsonl), into one compact CSV per
task: the record holds one line per run, and the run directories live only on the machine that
trained them, so the curves (for "how many steps before the loss degraded") are kept here.
Columns: size, kind, lr, seed, step, the step's training loss, max |logit| over layers and heads,
log Z of the output logits, and 1 on the step of a logit-monitor warning.
usage: results/lr-sweep-scale/curves.py <task> > results/lr-sweep-scale/<task>/curves.csv"""
import glob
import json
import sys

task = sys.argv[1]
print("size,kind,lr,seed,step,loss,logit_abs_max,log_z,warned")
paths = glob.glob(f"runs/lr-sweep-scale/{task}/*/lr-*/*/seed-*/metrics.jsonl")
def order(p):
    parts = p.split("/")
    return parts[3], float(parts[4][3:]), parts[5], int(parts[6][5:])
for path in sorted(paths, key=order):
    size, lr, kind, seed = order(path)
    try:
        with open(path.replace("metrics.jsonl", "outcome.json")) as f:
            if json.load(f).get("status") not in ("ok", "diverged"):
                continue
    except FileNotFoundError:  # still training
        continue
    rows, warned = {}, set()
    for line in open(path):
        j = json.loads(line)
        if j.get("type") == "step":
            logit = max((x for a in j.get("attention", []) for x in a["logit_abs_max"]), default=float("nan"))
            rows[j["step"]] = (j["loss"], logit, j.get("log_z", float("nan")))
        elif j.get("type") == "warning":
            warned.add(j["step"])
    for step in sorted(rows):  # a resumed run logs a step again: the last line counts
        loss, logit, log_z = rows[step]
        print(f"{size},{kind},{lr:g},{seed},{step},{loss:.4g},{logit:.4g},{log_z:.4g},{int(step in warned)}")
