#!/usr/bin/env bash
# The ViT training step on torch 2.13 (this build) against the LibTorch 1.13 build of the last
# commit before the move (2ba6b64), side by side: ROUNDS alternating rounds, one epoch of
# configs/full.json each (54 000 images, 2 threads), images/s from each run's last progress line.
# Usage: results/torch2/training_step.sh <old quest binary> <new quest binary> [rounds] > out.csv
set -euo pipefail
old=$1 new=$2 rounds=${3:-3}
config=$(cd "$(dirname "$0")/../.." && pwd)/configs/full.json
work=$(mktemp -d)
echo "round,build,images_per_second"
for round in $(seq 1 "$rounds"); do
  for build in old new; do
    bin=$old; [ "$build" = new ] && bin=$new
    rate=$(OMP_NUM_THREADS=2 "$bin" train --config "$config" --epochs 1 --run-dir "$work/$build-$round" 2>&1 \
           | grep -o '[0-9.]* img/s' | tail -1 | cut -d' ' -f1)
    echo "$round,$build,$rate"
  done
done
rm -rf "$work"
