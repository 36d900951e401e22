#!/usr/bin/env bash
# The training step with bf16 autocast against float32 (issue #33 item 3), side by side: ROUNDS
# alternating rounds (order swapped every round) of one epoch of configs/full.json (ViT, 54 000
# images) and of configs/lm-quick.json (3 epochs of 60 steps; the last epoch's rate), each with
# --autocast off and bf16, 2 threads; the rate is the epoch line's images_per_second /
# tokens_per_second of metrics.jsonl (training only). BACKENDS (default: automatic) lists the
# attention backends to run each with (--backend: fused, composite, sdpa, ...), in an order that
# rotates every round. TASKS (default "vit lm") picks the tasks. BASELINE names a second quest
# binary for an A/B of two builds: each round then runs both ("old" = BASELINE, "new" = the
# first argument), in an order that alternates every round. Pause anything else running on the
# machine.
# Usage: [BACKENDS="fused composite sdpa"] [TASKS=vit] [BASELINE=/old/quest] \
#          results/training-step/autocast.sh [quest binary] [rounds] > autocast.csv
# (CSVs written before 2026-12-04's fifth session have no backend column: automatic, i.e. fused;
# those before 2026-12-05's tenth session no binary column: one binary. autocast-ab-26a6694-2026-12-05.csv was
# written by the former ab_vit.sh, the same loop with BASELINE set and TASKS=vit.)
set -euo pipefail
bin=${1:-./build/quest} rounds=${2:-3}
read -r -a backends <<< "${BACKENDS:-automatic}"
read -r -a tasks <<< "${TASKS:-vit lm}"
for task in "${tasks[@]}"; do
  case $task in vit|lm) ;; *) echo "autocast.sh: TASKS holds '$task': the tasks are vit and lm" >&2; exit 2 ;; esac
done
for quest in "$bin" ${BASELINE:+"$BASELINE"}; do
  [ -x "$quest" ] || { echo "autocast.sh: no quest binary at '$quest'" >&2; exit 2; }
done
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "round,task,backend,binary,autocast,rate,final_train_loss"
for round in $(seq 1 "$rounds"); do
  order="off bf16"; [ $((round % 2)) = 0 ] && order="bf16 off"
  builds="new"
  if [ -n "${BASELINE:-}" ]; then builds="old new"; [ $((round % 2)) = 0 ] && builds="new old"; fi
  for task in "${tasks[@]}"; do
    cmd="train"; config=$root/configs/full.json; epochs="--epochs 1"; key=images_per_second
    [ "$task" = lm ] && { cmd="lm train"; config=$root/configs/lm-quick.json; epochs=""; key=tokens_per_second; }
    n=${#backends[@]}
    for k in $(seq 0 $((n - 1))); do
      backend=${backends[$(((k + round) % n))]}
      for build in $builds; do
        quest=$bin; [ "$build" = old ] && quest=$BASELINE
        for ac in $order; do
          dir=$work/$task-$backend-$build-$ac-$round
          OMP_NUM_THREADS=2 "$quest" $cmd --config "$config" $epochs --backend "$backend" --autocast "$ac" \
            --run-dir "$dir" > "$dir.log" 2>&1
          python3 - "$dir/metrics.jsonl" "$round" "$task" "$backend" "$build" "$ac" "$key" <<'PY'
import json, sys
path, round_, task, backend, build, ac, key = sys.argv[1:]
epochs = [json.loads(l) for l in open(path) if '"type":"epoch"' in l]
print(f"{round_},{task},{backend},{build},{ac},{epochs[-1][key]:.1f},{epochs[-1]['train_loss']:.4f}")
PY
        done
      done
    done
  done
done
