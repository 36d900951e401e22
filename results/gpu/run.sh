#!/bin/sh
# The GPU check (issue #32 item 4), as one command on the device machine (torch 2.11 + CUDA there,
# nothing to download): builds quest's operators against that torch, then runs
# bench/python/gpu_check.py, which writes gpu-check.{json,md} and the logs into $OUT.
# Highway is not on that machine: .gpu/hwy is a copy of this machine's libhwy-dev (headers, library,
# CMake config), made by results/gpu/carry-highway.sh and carried along (git-ignored).
set -u
OUT=${OUT:-/tmp/quest-gpu-out}
PY=${PYTHON:-python3}
BUILD=${BUILD:-/tmp/quest-gpu-build}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; $PY -c 'import torch; print(torch.__version__, torch.version.cuda)'; } 2>&1 | tee "$OUT/machine.txt"
start=$(date +%s)
if ! { cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DQUEST_WITH_LAB=OFF -DQUEST_BUILD_TESTS=OFF \
         -DQUEST_PYTHON="$(command -v "$PY")" -Dhwy_DIR="$PWD/.gpu/hwy/lib/x86_64-linux-gnu/cmake/hwy" &&
       cmake --build "$BUILD" --target quest_python -j "$(nproc)"; } > "$OUT/build.log" 2>&1; then
  tail -n 60 "$OUT/build.log"
  echo "run.sh: the build failed (log: build.log)"
  exit 2
fi
echo "built in $(( $(date +%s) - start )) s"
export LD_LIBRARY_PATH="$PWD/.gpu/hwy/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
PYTHONUNBUFFERED=1 PYTHONPATH="$BUILD/python" $PY bench/python/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu-check.log"
