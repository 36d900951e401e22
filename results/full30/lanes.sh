#!/bin/bash
# Two single-threaded lanes side by side: ~400 img/s each vs ~450-600 img/s for one 2-thread run.
cd /work/main
lane() {
  for ks in "$@"; do
    k=${ks%:*}; s=${ks#*:}
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 ./build/quest compare --config configs/full.json \
      --kinds $k --seeds $s --out-dir runs/full30 --log-every 200 --resume \
      > runs/full30/stream-$k-$s.log 2>&1
  done
}
lane standard:0 quest:1 standard:1 qknorm:2 &
lane qknorm:0 quest:2 qknorm:1 standard:2 &
wait
