#!/bin/bash
# Alternating before/after runs of the torch-free fused driver (same flags, same machine, same minute).
# The two drivers, each built from its checkout (before: git worktree add /tmp/before-src 29093c4):
#   c++ -O3 -DNDEBUG -DHWY_SHARED_DEFINE -fopenmp -std=gnu++17 -Iinclude -I. src/core/kind.cpp \
#     src/core/problem.cpp src/core/diagnostics.cpp src/core/reference.cpp src/core/fused.cpp \
#     bench/profile_fused.cpp -o /tmp/pf-<before|after> -lhwy <torch's lib>/libgomp.so.1
# Then: OUT=compare.csv ./compare.sh && python3 analyse.py compare.csv
export OMP_NUM_THREADS=2
out=${OUT:-compare.csv}; echo "B,H,N,D,kind,mode,round,version,gflops" > $out
for shape in "128 4 50 16 40" "64 4 65 32 50" "16 4 128 32 60" "32 12 197 64 4" "4 8 1024 64 4" "1 8 4096 64 2"; do
  set -- $shape
  for kind in standard quest; do
  for mode in forward backward; do
    for r in 1 2 3 4 5 6 7; do
      for v in before after; do
        [ $((r % 2)) = 0 ] && v=$([ $v = before ] && echo after || echo before)
        g=$(/tmp/pf-$v $1 $2 $3 $4 $kind $mode $5 | sed 's/.*gflops=//')
        echo "$1,$2,$3,$4,$kind,$mode,$r,$v,$g" >> $out
      done
    done
  done
  done
done
