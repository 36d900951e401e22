#!/bin/sh
# The scale sweep of both tasks, one after the other, resumable: run it again (any session, any
# machine) and finished runs are read, diverged ones are not retrained, a killed one resumes from
# its last epoch. QUEST is the binary to use (default ./build/quest; a copy of it keeps a rebuild
# during the sweep from changing the code under it). Outputs: runs/lr-sweep-scale/{vit,lm}.
set -eu
QUEST=${QUEST:-./build/quest}
for task in vit lm; do
  mkdir -p runs/lr-sweep-scale
  "$QUEST" experiment lr-sweep --sweep configs/lr-sweep-scale-$task.json --out-dir runs/lr-sweep-scale/$task \
    --workers 2 --resume
done
