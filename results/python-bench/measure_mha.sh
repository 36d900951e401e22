#!/bin/bash
# quest.MultiheadAttention self-attention steps, this checkout's python/quest/nn.py against
# OLD_COMMIT's, both on this build's operators (build/python), interleaved rounds.
# usage: results/python-bench/measure_mha.sh OLD_COMMIT [ROUNDS] > mha-runs.csv
set -euo pipefail
old=${1:?old commit}; rounds=${2:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/quest-mha-old.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -r "$root/build/python/quest" "$work/quest"
git -C "$root" show "$old:python/quest/nn.py" > "$work/quest/nn.py"
echo "round,shape,build,ms"
for r in $(seq 1 "$rounds"); do
  for build in old new; do
    path="$root/build/python"; [ $build = old ] && path="$work"
    PYTHONPATH="$path" /usr/bin/python3 "$root/results/python-bench/mha_step.py" |
      while read -r shape ms; do echo "$r,\"$shape\",$build,$ms"; done
  done
done
