#!/usr/bin/env bash
# Installs what is missing (Debian packages), then configures and builds quest into build/.
# Usage: scripts/setup.sh [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-*: the Python package (python3-torch is the same source package as libtorch-dev, so
# Debian's /usr/bin/python3 loads the LibTorch quest links), its tests and example. linux-doc-6.1:
# the kernel documentation's reStructuredText, the language-modelling corpus (lab/data/text.h).
# libopenblas0-openmp: OpenBLAS on libgomp's threads, which `quest` loads (src/cli/main.cpp); the
# pthread build stays the system's default.
packages=(libtorch-dev libopenblas0-pthread libopenblas0-openmp dataset-fashion-mnist libgtest-dev libbenchmark-dev
          libcli11-dev nlohmann-json3-dev libhwy-dev gnuplot-nox zlib1g-dev libjpeg-dev cmake g++
          python3-torch python3-numpy python3-pytest python3-torchvision linux-doc-6.1 libgloo-dev)
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

jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j"$jobs"
