#!/bin/sh
# Issue 36's repeat "on a machine of the other SIMD target": one point of the scale sweep per kind
# (size s2, lr 0.1, seed 0; vit.json / lm.json are the sweep files cut down to it) trained again
# with this build twice — on the machine's own best SIMD target, and restricted to AVX2 code paths
# everywhere: quest's fused kernel (QUEST_SIMD_TARGET), ATen's kernels (ATEN_CPU_CAPABILITY), MKL
# and oneDNN. An AVX-512 machine so restricted executes what an AVX2 machine would (same library
# builds; only MKL's choice of kernel by CPU vendor may differ). Records: {native,AVX2}-{vit,lm}.jsonl
# here, beside the sweep's own records of the same points. Resumable like the sweep.
set -eu
QUEST=${QUEST:-./build/quest}
here=results/lr-sweep-scale/repeat
for task in vit lm; do
  for target in native AVX2; do
    set --
    [ "$target" = AVX2 ] && set -- QUEST_SIMD_TARGET=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
    env "$@" OMP_NUM_THREADS=1 "$QUEST" experiment lr-sweep --sweep $here/$task.json \
      --out-dir runs/lr-sweep-scale-repeat/$target/$task --workers 1 --resume --record $here/$target-$task.jsonl
  done
done
