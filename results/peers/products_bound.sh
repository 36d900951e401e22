#!/bin/bash
# How far can bf16 products take the fused kernel? One thread, each shape in float32 and in bf16
# under `perf record`: the samples in the kernel's matrix products (float32 Gemm, the bf16 Micro
# kernels) and in the rest of the kernel (softmax, norms, masks, packing, staging, poison sums,
# waiting on memory), without profile_fused's own set-up (its inputs, the kernel's page faults).
# The shares of those samples split each run's timed seconds; summarize_bound.py makes the bounds.
# usage: [SHAPES="128,4,50,16 32,12,197,64"] results/peers/products_bound.sh [ROUNDS] > bound.csv
# (PROFILE_FUSED=path: another build's bench/profile_fused; the layout is quest's MultiheadAttention's.)
set -euo pipefail
rounds=${1:-3}
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/results/head-gemms/common.sh"
bin=${PROFILE_FUSED:-$root/build/bench/profile_fused}
[ -x "$bin" ] || { echo "no $bin: build the project first" >&2; exit 2; }
shapes_from_env "128 4 50 16" "64 4 65 32" "16 4 128 32" "32 12 197 64" "4 8 1024 64"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "round,shape,dtype,gflops,products,rest,setup"
for r in $(seq 1 "$rounds"); do
  for s in "${shapes[@]}"; do
    read -r B H N D <<< "$s"
    reps=$(echo "x = 60000000000 / (14 * $B * $H * $N * $N * $D); if (x < 3) 3 else x" | bc)  # ~60 GFLOP
    for dt in fp32 bf16; do
      line=$(PROFILE_LAYOUT=packed PROFILE_DTYPE=$dt OMP_NUM_THREADS=1 \
        perf record -q -F 1999 -o "$work/p.data" "$bin" $B $H $N $D quest backward $reps 2>/dev/null)
      counts=$(perf report -i "$work/p.data" --no-children --sort symbol -q -n 2>/dev/null | awk '
        { n = $2; sym = ""; for (i = 3; i <= NF; ++i) sym = sym " " $i }
        sym ~ /N_AVX3::Gemm |bf16_dot::.*Micro|bf16_dot::gemm / { p += n; next }
        sym ~ / main |mersenne|normal_distribution|\[k\]|std::vector/ { s += n; next }
        { q += n }
        END { printf "%d,%d,%d", p, q, s }')
      printf "%s,\"%s\",%s,%s,%s\n" "$r" "${s// /,}" "$dt" "$(field gflops "$line")" "$counts"
    done
  done
done
