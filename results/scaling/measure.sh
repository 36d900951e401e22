#!/bin/sh
# Data-parallel scaling on this machine: one epoch of the ViT (configs/quick.json) and of the LM
# (configs/lm-quick.json, 1 epoch), each as 1 process x 2 threads and as 2 ranks x 1 thread,
# interleaved for $ROUNDS rounds. Writes runs.csv: one line per (task, layout, round) with the
# throughput and, for 2 ranks, bytes all-reduced per step and seconds in all-reduce per step.
# Usage: results/scaling/measure.sh [quest binary] (OPENBLAS_CORETYPE as the caller sets it).
set -eu
QUEST=${1:-build/quest}
ROUNDS=${ROUNDS:-3}
OUT=$(dirname "$0")
WORK=${WORK:-/tmp/quest-scaling}
PY=/usr/bin/python3
echo "task,layout,round,samples_per_second,steps,allreduce_bytes_per_step,allreduce_seconds_per_step,epoch_seconds" > "$OUT/runs.csv"
for round in $(seq 1 "$ROUNDS"); do
  for layout in 1x2 2x1; do
    for task in vit lm; do
      dir=$WORK/$task-$layout-$round
      rm -rf "$dir"
      if [ "$layout" = 1x2 ]; then par="" threads=2; else par="--nproc-per-node 2" threads=1; fi
      if [ "$task" = vit ]; then
        OMP_NUM_THREADS=$threads "$QUEST" train --config configs/quick.json --epochs 1 --no-test --run-dir "$dir" $par > /dev/null
      else
        OMP_NUM_THREADS=$threads "$QUEST" lm train --config configs/lm-quick.json --epochs 1 --no-test --run-dir "$dir" $par > /dev/null
      fi
      $PY - "$dir/metrics.jsonl" "$task" "$layout" "$round" >> "$OUT/runs.csv" <<'PYEOF'
import json, sys
path, task, layout, rnd = sys.argv[1:]
epoch = [json.loads(l) for l in open(path) if '"epoch"' in l and json.loads(l)["type"] == "epoch"][-1]
rate = epoch.get("images_per_second", epoch.get("tokens_per_second"))
steps = epoch["step"]
b = epoch.get("allreduce_bytes_per_step", "")
s = epoch["allreduce_seconds"] / steps if "allreduce_seconds" in epoch else ""
print(f"{task},{layout},{rnd},{rate:.1f},{steps},{b},{s},{epoch['epoch_seconds']:.2f}")
PYEOF
      tail -1 "$OUT/runs.csv"
    done
  done
done
