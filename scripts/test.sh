#!/usr/bin/env bash
# Builds and runs every test: the main build's CTest suite, the Python package's pytest suite, the
# torch-free core and the loader fuzzing under AddressSanitizer + UBSan, and one downstream project
# per installed target (find_package).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

scripts/setup.sh
(cd build && ctest -j"$jobs" --output-on-failure --timeout 600)

echo "== Python package: pytest with the interpreter the package was built for"
python=$(sed -n 's/^QUEST_PYTHON:FILEPATH=//p' build/CMakeCache.txt)
PYTHONPATH="$PWD/build/python" "${python:-/usr/bin/python3}" -m pytest tests/python -q -p no:cacheprovider

echo "== core under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUEST_WITH_TORCH=OFF -DQUEST_SANITIZE=ON > /dev/null
cmake --build build-sanitize -j"$jobs"
(cd build-sanitize && ctest -j"$jobs" --output-on-failure)

echo "== loader fuzzing (IDX, config, checkpoint) under AddressSanitizer + UBSan, with LibTorch"
# -O1 -g1 (line tables): sanitizer reports with lines at a fraction of a full debug build's time.
cmake -S . -B build-sanitize-lab -DCMAKE_BUILD_TYPE=None "-DCMAKE_CXX_FLAGS=-O1 -g1" -DQUEST_WITH_TORCH=ON \
  -DQUEST_SANITIZE=ON > /dev/null
cmake --build build-sanitize-lab -j"$jobs" --target quest_fuzz_tests
build-sanitize-lab/tests/quest_fuzz_tests

echo "== find_package(quest) from downstream projects, one per target"
rm -rf build/install build/consumers
cmake --install build --prefix build/install > /dev/null
prefix=(-DCMAKE_PREFIX_PATH="$PWD/build/install")
# quest::core: no LibTorch.
cmake -S examples/consumer-core -B build/consumers/core "${prefix[@]}" -DCMAKE_DISABLE_FIND_PACKAGE_Torch=TRUE > /dev/null
cmake --build build/consumers/core -j"$jobs"
build/consumers/core/consumer_core
# quest::torch: LibTorch is its only third-party dependency; the lab's are disabled here.
cmake -S examples/consumer -B build/consumers/torch "${prefix[@]}" -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=TRUE \
  -DCMAKE_DISABLE_FIND_PACKAGE_ZLIB=TRUE -DCMAKE_DISABLE_FIND_PACKAGE_JPEG=TRUE > /dev/null
cmake --build build/consumers/torch -j"$jobs"
build/consumers/torch/consumer
# quest::lab: the training engine.
cmake -S examples/consumer-lab -B build/consumers/lab "${prefix[@]}" > /dev/null
cmake --build build/consumers/lab -j"$jobs"
build/consumers/lab/consumer_lab
