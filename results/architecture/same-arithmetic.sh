#!/bin/bash
# Does the refactored training engine compute what the old trainer computed? The old binary
# (commit 2bd0003, before the architecture change) trains quest seed 0 on configs/quick.json; its
# epoch-1 checkpoint is copied twice; the old and the new binary each resume one copy to epoch 3.
# From the same weights and optimiser state, every step line (loss, lr, grad norm, per-layer
# attention diagnostics), every epoch line and the test accuracy must be identical.
# Usage: same-arithmetic.sh OLD_QUEST NEW_QUEST WORK_DIR
set -euo pipefail
old=$1 new=$2 work=$3
config=$(cd "$(dirname "$0")/../.." && pwd)/configs/quick.json
mkdir -p "$work" && cd "$work" && rm -rf old copy-old copy-new
"$old" train --config "$config" --attention quest --seed 0 --run-dir old > old.log 2>&1 &
pid=$!
while [ ! -f old/checkpoint.pt ]; do sleep 1; done  # written atomically after epoch 1
sleep 2
cp -r old copy-old
cp -r old copy-new
wait $pid
"$old" train --config copy-old/config.json --run-dir copy-old --resume > copy-old.log 2>&1
"$new" train --config copy-new/config.json --run-dir copy-new --resume > copy-new.log 2>&1
for f in old.log copy-old.log copy-new.log; do echo "$f: $(tail -n 1 $f)"; done
python3 - <<'PY'
import json
def lines(p):
    out = []
    for l in open(p):
        j = json.loads(l)
        for k in ('epoch_seconds', 'images_per_second', 'samples_per_second', 'train_seconds', 'total_steps'):
            j.pop(k, None)  # wall-clock fields
        out.append(j)
    return out
a, b = lines('copy-old/metrics.jsonl'), lines('copy-new/metrics.jsonl')
print(f"metrics lines: old {len(a)}, new {len(b)}; identical apart from timings: {a == b}")
PY
