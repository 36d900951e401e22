#!/bin/bash
# quest.MultiheadAttention self-attention steps (mha_step.py) under the thread set-ups a Python
# user meets on Debian, interleaved rounds:
#   default      torch's default threads (1 on this 2-core VM), Debian's pthread OpenBLAS
#   two-pools    torch.set_num_threads(2), pthread OpenBLAS beside libgomp's pool
#   passive      the same with OMP_WAIT_POLICY=passive OPENBLAS_THREAD_TIMEOUT=4
#   one-pool     2 threads, LD_LIBRARY_PATH=<OpenBLAS's OpenMP build> (libopenblas0-openmp)
# usage: results/python-bench/measure_threads.sh [ROUNDS] > threads-runs.csv
set -euo pipefail
rounds=${1:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
openmp_dir=$(PYTHONPATH="$root/build/python" /usr/bin/python3 -c "import quest; print(quest.runtime()['blas_openmp_dir'])")
[ -n "$openmp_dir" ] || { echo "OpenBLAS's OpenMP build not found beside the pthread one" >&2; exit 2; }
echo "round,setup,shape,ms"
for r in $(seq 1 "$rounds"); do
  for setup in default two-pools passive one-pool; do
    case $setup in
      default) env=(MHA_THREADS=0) ;;
      two-pools) env=(MHA_THREADS=2) ;;
      passive) env=(MHA_THREADS=2 OMP_WAIT_POLICY=passive OPENBLAS_THREAD_TIMEOUT=4) ;;
      one-pool) env=(MHA_THREADS=2 "LD_LIBRARY_PATH=$openmp_dir") ;;
    esac
    env -u OMP_WAIT_POLICY -u OPENBLAS_THREAD_TIMEOUT -u LD_LIBRARY_PATH "${env[@]}" \
      PYTHONPATH="$root/build/python" /usr/bin/python3 -W ignore "$root/results/python-bench/mha_step.py" |
      while read -r shape ms; do echo "$r,$setup,\"$shape\",$ms"; done
  done
done
