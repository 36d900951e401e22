#!/bin/bash
# One ViT training epoch of configs/full.json (54 000 images, 2 threads) with the build from when
# issue #18 was filed and with this build, interleaved over rounds: images/s from the epoch line
# of metrics.jsonl (training only). The current build runs twice: as `quest` sets itself up (one
# thread pool: Debian's OpenMP OpenBLAS) and with the pthread OpenBLAS (two pools, as before).
# Usage: results/training-step/measure.sh <old quest> <new quest> [rounds] > runs.csv
# (OPENBLAS_CORETYPE as the caller sets it; the README names what was used.)
set -eu
old=$1; new=$2; rounds=${3:-3}
tmp=$(mktemp -d)
lib=/usr/lib/x86_64-linux-gnu
echo "round,build,images_per_second,train_loss,epoch_seconds"
for r in $(seq "$rounds"); do
  for build in old new new-two-pools; do
    rm -rf "$tmp/run"
    case $build in
      old) cmd=("$old"); extra=();;  # that build has no --no-test: its test evaluation is not timed
      new) cmd=("$new"); extra=(--no-test);;
      new-two-pools) cmd=(env "LD_LIBRARY_PATH=$lib/openblas-pthread" "$new"); extra=(--no-test);;
    esac
    OMP_NUM_THREADS=2 "${cmd[@]}" train --config configs/full.json --epochs 1 "${extra[@]}" \
      --run-dir "$tmp/run" > /dev/null 2>&1
    /usr/bin/python3 - "$tmp/run/metrics.jsonl" "$r" "$build" <<'PY'
import json, sys
path, r, build = sys.argv[1:]
e = next(json.loads(l) for l in open(path) if json.loads(l).get("type") == "epoch")
print(f"{r},{build},{e['images_per_second']:.1f},{e['train_loss']:.6f},{e['epoch_seconds']:.2f}")
PY
  done
done
rm -rf "$tmp"
