# Shared by measure.sh, ab.sh and ablation.sh (sourced, not run).
# shapes_from_env DEFAULT...: the array `shapes` ("B H N D" each) from $SHAPES ("B,H,N,D ...") if set,
# else the defaults.
shapes_from_env() {
  shapes=("$@")
  if [ -n "${SHAPES:-}" ]; then
    local list x
    read -r -a list <<< "$SHAPES"; shapes=()
    for x in "${list[@]}"; do shapes+=("${x//,/ }"); done
  fi
}
# repeats_for B H N D: forward + backward calls making ~10 GFLOP (14 B H N^2 D each), at least 1.
repeats_for() {
  echo "x = 10000000000 / (14 * $1 * $2 * $3 * $3 * $4); if (x < 1) 1 else x" | bc
}
# build_profile_fused SRC BUILD [CXX_FLAGS]: the torch-free bench/profile_fused of the tree SRC.
build_profile_fused() {
  cmake -S "$1" -B "$2" -DQUEST_WITH_TORCH=OFF -DQUEST_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release \
    "-DCMAKE_CXX_FLAGS=${3:-}" >/dev/null
  cmake --build "$2" --target profile_fused -j2 >"$2.log" 2>&1 || { cat "$2.log" >&2; exit 1; }
}
# fused_fb BIN THREADS B H N D REPS: profile_fused's line for REPS forward + backward calls, kind quest.
fused_fb() {
  OMP_NUM_THREADS=$2 "$1" "$3" "$4" "$5" "$6" quest backward "$7"
}
# field KEY LINE: the number after " KEY=" in a benchmark's output line.
field() {
  echo "$2" | sed -n "s/.* $1=\([0-9.]*\).*/\1/p"
}
