#!/bin/bash
# quest.MultiheadAttention self-attention steps (results/python-bench/mha_step.py) on torch 2.13's
# wheel, interleaved rounds of three thread set-ups (one OpenMP runtime, torch's libgomp, in each):
#   1-thread   torch.set_num_threads(1)
#   2-threads  torch.set_num_threads(2) (the wheel's default on this 2-core VM)
#   passive    2 threads with OMP_WAIT_POLICY=passive
# usage: results/torch2/measure_threads.sh [ROUNDS] > threads.csv   (after scripts/setup.sh)
set -euo pipefail
rounds=${1:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
echo "round,setup,shape,ms"
for r in $(seq 1 "$rounds"); do
  for setup in 1-thread 2-threads passive; do
    case $setup in
      1-thread) env=(MHA_THREADS=1) ;;
      2-threads) env=(MHA_THREADS=2) ;;
      passive) env=(MHA_THREADS=2 OMP_WAIT_POLICY=passive) ;;
    esac
    env -u OMP_WAIT_POLICY "${env[@]}" PYTHONPATH="$root/build/python" "$root/.venv/bin/python" -W ignore \
      "$root/results/python-bench/mha_step.py" | while read -r shape ms; do echo "$r,$setup,\"$shape\",$ms"; done
  done
done
