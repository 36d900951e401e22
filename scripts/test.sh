#!/usr/bin/env bash
# Builds and runs every test: the main build's CTest suite, the Python package's pytest suite (on
# the build tree, then on a wheel installed into a fresh virtual environment), the torch-free core
# and the loader fuzzing under AddressSanitizer + UBSan, and one downstream project per installed
# target (find_package).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

scripts/setup.sh
(cd build && ctest -j"$jobs" --output-on-failure --timeout 600)

echo "== Python package: pytest on the build tree (build/python), with .venv's torch"
PYTHONPATH="$PWD/build/python" .venv/bin/python -m pytest tests/python -q -p no:cacheprovider

echo "== Python package: pip wheel, installed into a fresh venv that holds only torch (+ pytest)"
# --no-build-isolation: build against the torch that is installed, not a second one pip would fetch.
rm -rf build/wheel build/wheel-venv
.venv/bin/python -m pip wheel -q --no-build-isolation --no-deps -w build/wheel .
torch_version=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
base_python=$(.venv/bin/python -c "import sys; print(sys._base_executable)")
"$base_python" -m venv build/wheel-venv
build/wheel-venv/bin/python -m pip install -q "torch==$torch_version" numpy pytest
build/wheel-venv/bin/python -m pip install -q --no-deps build/wheel/quest_attention-*.whl
# From another directory, so that `import quest` can only mean the installed package.
(cd build/wheel-venv && bin/python -c "import quest, torch; x = torch.randn(2, 2, 8, 4); \
print('installed quest', quest.__file__, quest.select_backend(x, x, x)[0])" && \
  bin/python -m pytest "$OLDPWD/tests/python" -q -p no:cacheprovider)

echo "== Python package: pip install -e (editable) in the same venv: sources from python/quest"
build/wheel-venv/bin/python -m pip uninstall -q -y quest-attention
build/wheel-venv/bin/python -m pip install -q scikit-build-core
build/wheel-venv/bin/python -m pip install -q --no-build-isolation -e .
(cd build/wheel-venv && bin/python -c "import quest, os; assert os.path.samefile(os.path.dirname(quest.__file__), \
'$OLDPWD/python/quest'), quest.__file__; print('editable quest', quest.__file__)" && \
  bin/python -m pytest "$OLDPWD/tests/python/test_attention.py" -q -p no:cacheprovider)

echo "== core under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUEST_WITH_TORCH=OFF -DQUEST_SANITIZE=ON > /dev/null
cmake --build build-sanitize -j"$jobs"
(cd build-sanitize && ctest -j"$jobs" --output-on-failure)

echo "== loader fuzzing (IDX, config, checkpoint) under AddressSanitizer + UBSan, with LibTorch"
# -O1 -g1 (line tables): sanitizer reports with lines at a fraction of a full debug build's time.
cmake -S . -B build-sanitize-lab -DCMAKE_BUILD_TYPE=None "-DCMAKE_CXX_FLAGS=-O1 -g1" -DQUEST_WITH_TORCH=ON \
  -DQUEST_PYTHON="$PWD/.venv/bin/python" -DQUEST_WITH_PYTHON=OFF -DQUEST_SANITIZE=ON > /dev/null
cmake --build build-sanitize-lab -j"$jobs" --target quest_fuzz_tests
build-sanitize-lab/tests/quest_fuzz_tests

echo "== find_package(quest) from downstream projects, one per target"
rm -rf build/install build/consumers
cmake --install build --prefix build/install > /dev/null
torch_prefix=$(.venv/bin/python -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
prefix=(-DCMAKE_PREFIX_PATH="$PWD/build/install;$torch_prefix")
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
