#!/bin/bash
# Where the fused forward + backward spends its time at the small shapes: the kernel built four
# ways from this commit plus ablation.patch (torch-free, bench/profile_fused only) —
#   full     the kernel as it is
#   nogemm   without its seven GEMMs (S, O = PV; S, dP, dV, dK, dQ)
#   norows   without the per-row softmax work (forward: mask, exp, row sums; backward: P, dS, D_i)
#   neither  without both: the per-head fixed costs (norms, packing, transposes, staging, stores)
# The results are meaningless (NaN outputs); only the time counts. One thread, interleaved rounds.
# usage: [SHAPES="128,4,50,16 64,4,65,32"] results/head-gemms/ablation.sh [ROUNDS] > ablation.csv
# One CSV row per (round, shape, variant): microseconds per head for forward + backward, and the
# GFLOP/s that makes by the FlashAttention convention (14 B H N^2 D).
set -euo pipefail
rounds=${1:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/results/head-gemms/common.sh"
work=${ABLATION_DIR:-/tmp/quest-ablation}
rm -rf "$work"
mkdir -p "$work/src"
git -C "$root" archive HEAD | tar -x -C "$work/src"
git -C "$work/src" init -q 2>/dev/null || true
(cd "$work/src" && git apply "$root/results/head-gemms/ablation.patch")
declare -A flags=([full]="" [nogemm]="-DABL_NOGEMM" [norows]="-DABL_NOROWS" [neither]="-DABL_NOGEMM -DABL_NOROWS")
for v in full nogemm norows neither; do
  build_profile_fused "$work/src" "$work/$v" "${flags[$v]}"
done
shapes_from_env "128 4 50 16" "64 4 65 32" "16 4 128 32" "32 12 197 64"
echo "round,shape,variant,us_per_head,gflops"
for r in $(seq 1 "$rounds"); do
  for s in "${shapes[@]}"; do
    read -r B H N D <<< "$s"
    reps=$(repeats_for $B $H $N $D)
    for v in full nogemm norows neither; do
      line=$(fused_fb "$work/$v/bench/profile_fused" 1 $B $H $N $D "$reps")
      sec=$(field seconds "$line")
      gf=$(field gflops "$line")
      us=$(echo "scale=3; $sec * 1000000 / ($reps * $B * $H)" | bc)
      printf "%s,\"%s\",%s,%s,%s\n" "$r" "${s// /,}" "$v" "$us" "$gf"
    done
  done
done
