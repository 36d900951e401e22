#!/bin/bash
# The language model's training throughput (configs/lm-quick.json, 3 epochs of 60 steps, 2 threads):
# the build before this work and this build, interleaved over rounds; tokens/s from the last epoch
# line of metrics.jsonl. Usage: results/training-step/measure-lm.sh <old quest> <new quest> [rounds]
set -eu
old=$1; new=$2; rounds=${3:-3}
tmp=$(mktemp -d)
echo "round,build,tokens_per_second,train_loss"
for r in $(seq "$rounds"); do
  for build in old new; do
    q=$old; [ "$build" = new ] && q=$new
    rm -rf "$tmp/run"
    OMP_NUM_THREADS=2 "$q" lm train --config configs/lm-quick.json --no-test --run-dir "$tmp/run" > /dev/null 2>&1
    /usr/bin/python3 - "$tmp/run/metrics.jsonl" "$r" "$build" <<'PY'
import json, sys
path, r, build = sys.argv[1:]
e = [json.loads(l) for l in open(path) if json.loads(l).get("type") == "epoch"][-1]
print(f"{r},{build},{e['tokens_per_second']:.0f},{e['train_loss']:.6f}")
PY
  done
done
rm -rf "$tmp"
