#!/bin/bash
# The fused forward + backward of two commits, side by side: bench/profile_fused (kind quest,
# torch-free) built at BASE and at HEAD, run alternately in interleaved rounds, one thread.
# usage: [SHAPES="128,4,50,16 64,4,65,32"] [THREADS=1] results/head-gemms/ab.sh BASE [ROUNDS] > ab.csv
# One CSV row per (round, shape, commit): GFLOP/s by the FlashAttention convention (14 B H N^2 D).
set -euo pipefail
base=$1
rounds=${2:-7}
threads=${THREADS:-1}
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/results/head-gemms/common.sh"
work=${AB_DIR:-/tmp/quest-ab}
rm -rf "$work"
declare -A commit=([base]=$(git -C "$root" rev-parse --short "$base") [head]=$(git -C "$root" rev-parse --short HEAD))
for v in base head; do
  mkdir -p "$work/$v/src"
  git -C "$root" archive "${commit[$v]}" | tar -x -C "$work/$v/src"
  build_profile_fused "$work/$v/src" "$work/$v/build"
done
shapes_from_env "128 4 50 16" "64 4 65 32" "16 4 128 32" "32 12 197 64"
echo "round,shape,commit,gflops"
for r in $(seq 1 "$rounds"); do
  order=(base head); [ $((r % 2)) -eq 0 ] && order=(head base)  # who goes first alternates
  for s in "${shapes[@]}"; do
    read -r B H N D <<< "$s"
    reps=$(repeats_for $B $H $N $D)
    for v in "${order[@]}"; do
      gf=$(field gflops "$(fused_fb "$work/$v/build/bench/profile_fused" $threads $B $H $N $D "$reps")")
      printf "%s,\"%s\",%s,%s\n" "$r" "${s// /,}" "${commit[$v]}" "$gf"
    done
  done
done
