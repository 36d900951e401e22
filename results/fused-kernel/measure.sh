#!/bin/bash
# Torch-free fused kernel, this checkout vs an older commit, interleaved rounds; one thread unless
# OMP_NUM_THREADS says otherwise (bench/profile_fused).
# usage: [PROFILE_TARGET=AVX2] [OMP_NUM_THREADS=2] [SHAPES="2,4,65,32 1,4,50,16"] \
#          results/fused-kernel/measure.sh OLD_COMMIT [ROUNDS] > runs.csv
# Builds bench/profile_fused of OLD_COMMIT's kernel (src/core) in a temporary worktree, with this
# checkout's driver (which takes a repeat count and times it), and of this checkout in build/.
# Prints one CSV row per (round, shape, mode, build): seconds for `repeats` calls after a warm-up
# call and the GFLOP/s they make (forward 4 B H N^2 D, forward + backward 3.5 times that).
set -euo pipefail
old=${1:?old commit}; rounds=${2:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/quest-fused-old.XXXXXX)
trap 'git -C "$root" worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add --detach "$work/src" "$old" >/dev/null 2>&1
cp "$root/bench/profile_fused.cpp" "$work/src/bench/profile_fused.cpp"
cmake -S "$work/src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/build" --target profile_fused -j2 >/dev/null
cmake --build "$root/build" --target profile_fused -j2 >/dev/null
new_bin="$root/build/bench/profile_fused"; old_bin="$work/build/bench/profile_fused"
# shared with results/head-gemms' scripts: $SHAPES, or these
source "$root/results/head-gemms/common.sh"
shapes_from_env "128 4 50 16" "64 4 65 32" "16 4 128 32" "32 12 197 64" "4 8 1024 64" "1 8 4096 64"
echo "round,shape,mode,build,repeats,seconds,gflops"
for r in $(seq 1 "$rounds"); do
  for s in "${shapes[@]}"; do
    read -r B H N D <<< "$s"
    for mode in forward backward; do
      f=$(echo "4*$B*$H*$N*$N*$D" | bc); [ $mode = backward ] && f=$(echo "$f*3.5" | bc)
      reps=$(echo "x = 40000000000 / $f; if (x < 1) 1 else x" | bc)  # ~40 GFLOP per timing
      for build in old new; do
        bin=$old_bin; [ $build = new ] && bin=$new_bin
        line=$("$bin" $B $H $N $D quest $mode "$reps")  # times the repeats itself, after a warm-up
        sec=$(echo "$line" | sed -n 's/.*seconds=\([0-9.]*\).*/\1/p')
        gf=$(echo "$line" | sed -n 's/.*gflops=\([0-9.]*\).*/\1/p')
        printf "%s,\"%s\",%s,%s,%s,%s,%s\n" "$r" "${s// /,}" "$mode" "$build" "$reps" "$sec" "$gf"
      done
    done
  done
done
