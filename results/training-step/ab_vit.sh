#!/usr/bin/env bash
# A/B of two quest binaries on the ViT step (configs/full.json, one epoch), float32 and bf16 autocast,
# interleaved: per round the binary order and the precision order alternate. Prints CSV.
set -euo pipefail
old=$1 new=$2 rounds=${3:-3} root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
echo "round,binary,autocast,rate,final_train_loss"
for round in $(seq 1 "$rounds"); do
  bins="old new"; [ $((round % 2)) = 0 ] && bins="new old"
  order="off bf16"; [ $((round % 2)) = 0 ] && order="bf16 off"
  for b in $bins; do
    bin=$old; [ $b = new ] && bin=$new
    for ac in $order; do
      dir=$work/$b-$ac-$round
      OMP_NUM_THREADS=2 "$bin" train --config $root/configs/full.json --epochs 1 --autocast $ac --run-dir $dir > $dir.log 2>&1
      python3 -c "
import json,sys
e=[json.loads(l) for l in open('$dir/metrics.jsonl') if '\"type\":\"epoch\"' in l][-1]
print(f\"$round,$b,$ac,{e['images_per_second']:.1f},{e['train_loss']:.4f}\")"
    done
  done
done
