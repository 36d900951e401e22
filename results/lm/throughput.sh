#!/bin/bash
# Language-model throughput, measured side by side in one script (2 threads):
#  1. training tokens/s of configs/lm.json's model with the fused causal kernel vs LibTorch's
#     composite attention (matmul -> mask -> softmax -> matmul), alternated twice each;
#  2. decoding tokens/s of a trained checkpoint with the KV cache and without it (recomputing the
#     window for every token), the same draws.
# usage: results/lm/throughput.sh <checkpoint.pt> [out.csv]   (run from the repository root)
set -euo pipefail
checkpoint=$1
out=${2:-results/lm/throughput.csv}
quest=${QUEST:-build/quest}
py=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=2
$quest info 2>&1 | grep -E "^BLAS|^threads" | sed 's/^/# /' > "$work/header"
echo "# OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-<unset>}" >> "$work/header"
cat "$work/header"
echo "what,variant,repeat,tokens_per_second" > "$work/csv"
for repeat in 1 2; do
  for backend in fused composite; do
    # configs/lm.json's model and batch; 60 steps on a 3 MB slice of the corpus (a short test split).
    $py - "$backend" "$work/$backend.json" <<'PY'
import json, sys
c = json.load(open("configs/lm.json"))
c["model"]["backend"] = sys.argv[1]
c.update(epochs=1, steps_per_epoch=60, warmup_epochs=0.1, corpus_bytes=3000000, eval_bytes=4096, log_every=20)
json.dump(c, open(sys.argv[2], "w"))
PY
    rm -rf "$work/run-$backend"
    tps=$($quest lm train --config "$work/$backend.json" --run-dir "$work/run-$backend" 2>&1 |
          sed -n 's/^training: .* s, \([0-9]*\) tokens\/s$/\1/p')
    echo "training $backend (repeat $repeat): $tps tokens/s"
    echo "train,$backend,$repeat,$tps" >> "$work/csv"
  done
done
for repeat in 1 2; do
  for cache in on off; do
    flag=""; [ $cache = off ] && flag="--no-cache"
    tps=$($quest lm generate --checkpoint "$checkpoint" --prompt "The kernel " --tokens 512 \
          --temperature 0.8 --top-k 40 --seed 1 $flag 2>&1 >/dev/null |
          sed -n 's/.* s: \([0-9.]*\) tokens\/s.*/\1/p')
    echo "decoding, KV cache $cache (repeat $repeat): $tps tokens/s"
    echo "decode,cache_$cache,$repeat,$tps" >> "$work/csv"
  done
done
{ cat "$work/header"; echo "# checkpoint: $checkpoint"; cat "$work/csv"; } > "$out"
echo "written $out"
