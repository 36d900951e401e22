#!/usr/bin/env bash
# Builds and runs every test: the main build's CTest suite, the torch-free core under
# AddressSanitizer + UBSan, and a downstream project that consumes the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

scripts/setup.sh
(cd build && ctest -j"$jobs" --output-on-failure --timeout 600)

echo "== core under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUEST_WITH_TORCH=OFF -DQUEST_SANITIZE=ON > /dev/null
cmake --build build-sanitize -j"$jobs"
(cd build-sanitize && ctest -j"$jobs" --output-on-failure)

echo "== find_package(quest) from a downstream project"
rm -rf build/install build/consumer
cmake --install build --prefix build/install > /dev/null
cmake -S examples/consumer -B build/consumer -DCMAKE_PREFIX_PATH="$PWD/build/install" > /dev/null
cmake --build build/consumer -j"$jobs"
build/consumer/consumer
