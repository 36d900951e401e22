#!/usr/bin/python3
"""Every logged training step of every ended run of the scale sweep, kept in one compact CSV per task
(results/lr-sweep-scale/<task>/curves.csv): the record holds one line per run, and the run
directories (runs/lr-sweep-scale/<task>/<size>/lr-<lr>/<kind>/seed-<s>/metrics.jsonl) live only on
the machine that trained them, so the curves (for "how many steps before the loss degraded") are
kept here. The CSV is updated in place: a run ended in a run directory here replaces its rows, every
other run's rows stay (those trained on earlier machines), so a session on a fresh machine adds to
the curves instead of losing them.
Columns: size, kind, lr, seed, step, the step's training loss, max |logit| over layers and heads,
log Z of the output logits, and 1 on the step of a logit-monitor warning.
usage: results/lr-sweep-scale/curves.py <task> [csv, default results/lr-sweep-scale/<task>/curves.csv]
                                       [run root, default runs/lr-sweep-scale/<task>]"""
import glob
import json
import os
import sys

HEADER = "size,kind,lr,seed,step,loss,logit_abs_max,log_z,warned"
task = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else f"results/lr-sweep-scale/{task}/curves.csv"
root = sys.argv[3] if len(sys.argv) > 3 else f"runs/lr-sweep-scale/{task}"

def run_key(size, kind, lr, seed):
    return size, float(lr), kind, int(seed)

runs = {}  # run key -> its CSV lines (steps in order)
if os.path.exists(out):
    with open(out) as f:
        if f.readline().strip() != HEADER:
            sys.exit(f"curves.py: {out} does not start with the header {HEADER}")
        for line in f:
            size, kind, lr, seed = line.split(",")[:4]
            runs.setdefault(run_key(size, kind, lr, seed), []).append(line.rstrip("\n"))

here = 0
for path in glob.glob(os.path.join(glob.escape(root), "*", "lr-*", "*", "seed-*", "metrics.jsonl")):
    size, lr, kind, seed = os.path.relpath(path, root).split(os.sep)[:4]
    lr, seed = lr[len("lr-"):], seed[len("seed-"):]
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
    lines = []
    for step in sorted(rows):  # a resumed run logs a step again: the last line counts
        loss, logit, log_z = rows[step]
        lines.append(f"{size},{kind},{float(lr):g},{seed},{step},{loss:.4g},{logit:.4g},{log_z:.4g},{int(step in warned)}")
    runs[run_key(size, kind, lr, seed)] = lines
    here += 1

tmp = out + ".tmp"
with open(tmp, "w") as f:
    print(HEADER, file=f)
    for key in sorted(runs):
        for line in runs[key]:
            print(line, file=f)
os.replace(tmp, out)  # atomic: an interrupted update leaves the old CSV whole
print(f"curves.py: {out}: {len(runs)} runs ({here} from run directories here)", file=sys.stderr)
