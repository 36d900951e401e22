#!/bin/sh
# Copies a sweep's small outputs (no checkpoints) from its --out-dir into results/lr-sweep/<task>:
# sweep.json, sensitivity.csv, runs.csv, the loss/logit-vs-LR plots, and the training curves of the
# contrast rate of each size (the directories `quest experiment lr-sweep` printed).
# usage: results/lr-sweep/collect.sh <out-dir> <task>     e.g. runs/lr-sweep/vit vit
set -eu
src=$1; dst=$(dirname "$0")/$2
mkdir -p "$dst/plots"
cp "$src/sweep.json" "$src/sensitivity.csv" "$src/runs.csv" "$dst/"
cp "$src"/plots/*.png "$dst/plots/"
for curves in "$src"/*/lr-*/plots; do
  [ -f "$curves/plots.gp" ] || continue
  rate=$(basename "$(dirname "$curves")"); size=$(basename "$(dirname "$(dirname "$curves")")")
  mkdir -p "$dst/curves-$size-$rate"
  cp "$curves"/*.png "$dst/curves-$size-$rate/"
done
