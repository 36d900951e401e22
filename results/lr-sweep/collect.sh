#!/bin/sh
# Copies a sweep's small outputs (no checkpoints) from its --out-dir into <results-dir>/<task>
# (default results/lr-sweep/<task>; the scale sweep's: results/lr-sweep-scale):
# sweep.json, sensitivity.csv, runs.csv, the loss/logit-vs-LR plots, and the training curves of the
# contrast rate of each size (the directories `quest experiment lr-sweep` printed).
# usage: results/lr-sweep/collect.sh <out-dir> <task> [<results-dir>]
#   e.g. runs/lr-sweep/vit vit;  runs/lr-sweep-scale/vit vit results/lr-sweep-scale
set -eu
src=$1; dst=${3:-$(dirname "$0")}/$2
mkdir -p "$dst/plots"
cp "$src/sweep.json" "$src/sensitivity.csv" "$src/runs.csv" "$dst/"
cp "$src"/plots/*.png "$dst/plots/"
for curves in "$src"/*/lr-*/plots; do
  [ -f "$curves/plots.gp" ] || continue
  rate=$(basename "$(dirname "$curves")"); size=$(basename "$(dirname "$(dirname "$curves")")")
  mkdir -p "$dst/curves-$size-$rate"
  cp "$curves"/*.png "$dst/curves-$size-$rate/"
done
