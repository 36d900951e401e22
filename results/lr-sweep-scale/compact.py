#!/usr/bin/python3
"""Rewrites a sweep record with one line per run (size, kind, lr, seed): the last, which the sweep
itself and interim.py read. The fingerprint migration of 2026-12-04 left every run recorded before
it twice. Only while no sweep writes the record (kill it first; its --resume reads the result).
usage: results/lr-sweep-scale/compact.py results/lr-sweep-scale/vit/record.jsonl"""
import json
import os
import sys

path = sys.argv[1]
latest = {}
with open(path) as f:
    for line in f:
        if line.strip():
            r = json.loads(line)
            latest[(r["size"], r["kind"], r["lr"], r["seed"])] = line if line.endswith("\n") else line + "\n"
before = sum(1 for line in open(path) if line.strip())
tmp = path + ".tmp"
with open(tmp, "w") as f:
    f.writelines(latest.values())  # dicts keep first-insertion order: the runs' original order
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, path)
print(f"{path}: {before} lines -> {len(latest)}")
