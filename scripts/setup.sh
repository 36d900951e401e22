#!/usr/bin/env bash
# Installs what is missing (Debian packages; torch 2.13.0 and the Python tools into the project's
# virtual environment .venv/), then configures and builds quest into build/ against that torch.
# Usage: scripts/setup.sh [extra cmake args...]
#   QUEST_BASE_PYTHON: the Python 3.11 to make .venv from (default: python3.11 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian 12 and 13 alike. linux-doc: the kernel documentation's reStructuredText, the
# language-modelling corpus (lab/data/text.h). libopenblas0-openmp: only bench/head_gemms (OpenBLAS
# on a head's bare GEMMs); torch's wheel brings its own BLAS (MKL) and OpenMP runtime.
packages=(dataset-fashion-mnist libgtest-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev libhwy-dev
          gnuplot-nox zlib1g-dev libjpeg-dev cmake g++ make linux-doc libgloo-dev libopenblas0-openmp)
base_python=${QUEST_BASE_PYTHON:-$(command -v python3.11 || true)}
if [ -z "$base_python" ]; then
  # Debian 12's own Python is 3.11; the torch 2.13.0 wheel on this machine kind is for 3.11.
  packages+=(python3.11 python3.11-venv)
  base_python=/usr/bin/python3.11
elif [ "$base_python" = /usr/bin/python3.11 ]; then
  packages+=(python3.11-venv)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The project's Python: torch 2.13.0 (the CPU wheel; pip takes it from this machine's disk), what
# the tests and `pip install .` need. A torch already there stays.
torch_version=2.13.0
if [ ! -x .venv/bin/python ]; then
  echo "setup: making .venv from $base_python"
  "$base_python" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, numpy, pytest, scikit_build_core" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==$torch_version" numpy pytest scikit-build-core
fi

jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DQUEST_PYTHON="$PWD/.venv/bin/python" "$@"
cmake --build build -j"$jobs"
