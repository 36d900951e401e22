#!/bin/sh
# The scale sweep of both tasks, side by side (one worker of one thread each), resumable: run it again (any
# session, any machine) and finished runs are read, diverged ones are not retrained, a killed one
# resumes from its last epoch. QUEST is the binary to use (default ./build/quest; a copy of it keeps
# a rebuild during the sweep from changing the code under it). Outputs: runs/lr-sweep-scale/{vit,lm}
# and their logs sweep-{vit,lm}.log; each ended run is also a line of
# results/lr-sweep-scale/{vit,lm}/record.jsonl (committed as it grows), from which a later session
# on a fresh machine resumes without the run directories.
set -eu
QUEST=${QUEST:-./build/quest}
mkdir -p runs/lr-sweep-scale
for task in vit lm; do
  OMP_NUM_THREADS=1 "$QUEST" experiment lr-sweep --sweep configs/lr-sweep-scale-$task.json --out-dir runs/lr-sweep-scale/$task \
    --workers 1 --resume --record results/lr-sweep-scale/$task/record.jsonl >> runs/lr-sweep-scale/sweep-$task.log 2>&1 &
done
wait
