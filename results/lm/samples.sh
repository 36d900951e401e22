#!/bin/bash
# One generated sample per kind, from each kind's seed-0 checkpoint of the experiment, the same
# prompt and sampling draws (seed 0), KV-cache decoding; markdown on stdout (a byte model can emit
# invalid UTF-8: such bytes are dropped for display, and trailing blanks of each line).
# usage: results/lm/samples.sh [runs/lm-compare]   (run from the repository root)
set -euo pipefail
dir=${1:-runs/lm-compare}
quest=${QUEST:-build/quest}
for kind in standard quest qnorm qknorm qk_layernorm; do
  echo "**$kind** (seed 0):"
  echo
  echo '~~~~text'
  $quest lm generate --checkpoint "$dir/$kind/seed-0/checkpoint.pt" --prompt "The kernel " --tokens 300 \
    --temperature 0.8 --top-k 40 --seed 0 2>/dev/null | iconv -f utf-8 -t utf-8 -c | sed 's/[[:space:]]*$//'
  echo '~~~~'
  echo
done
