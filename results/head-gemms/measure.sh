#!/bin/bash
# The fused kernel's forward + backward against OpenBLAS doing only the seven GEMMs of each head
# (bench/head_gemms) and against sgemm 1024^3, at 1 and 2 threads, interleaved rounds.
# usage: [SHAPES="64,4,65,32 32,12,197,64"] results/head-gemms/measure.sh [ROUNDS] > runs.csv
# One CSV row per (round, shape, threads, what): GFLOP/s by the FlashAttention convention
# (forward + backward 14 B H N^2 D) and, for head_gemms rows, the sgemm 1024^3 median of that
# process (3 samples alternating with the heads). The fused rows are bench/profile_fused, kind
# quest, ~10 GFLOP per timing after a warm-up call, run right after the head_gemms row.
set -euo pipefail
rounds=${1:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/results/head-gemms/common.sh"
cmake --build "$root/build" --target profile_fused head_gemms -j2 >/dev/null
shapes_from_env "128 4 50 16" "64 4 65 32" "16 4 128 32" "32 12 197 64" "4 8 1024 64" "1 8 4096 64"
echo "round,shape,threads,what,gflops,sgemm_gflops"
for r in $(seq 1 "$rounds"); do
  for s in "${shapes[@]}"; do
    read -r B H N D <<< "$s"
    reps=$(repeats_for $B $H $N $D)
    for t in 1 2; do
      line=$(OMP_NUM_THREADS=$t "$root/build/bench/head_gemms" $B $H $N $D 3)
      gf=$(field head_gemms_gflops "$line")
      sg=$(field sgemm1024_gflops "$line")
      printf "%s,\"%s\",%s,head_gemms,%s,%s\n" "$r" "${s// /,}" "$t" "$gf" "$sg"
      gf=$(field gflops "$(fused_fb "$root/build/bench/profile_fused" $t $B $H $N $D "$reps")")
      printf "%s,\"%s\",%s,fused,%s,\n" "$r" "${s// /,}" "$t" "$gf"
    done
  done
done
