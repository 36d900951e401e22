"""Loads libquest_ops.so (built from src/torch/ops.cpp) into torch's dispatcher."""
import os

import torch

try:
    from . import _build  # written by CMake next to the library (build/python/quest, a wheel)
except ImportError as e:
    raise ImportError("quest: the operator library is not built; install the package with `pip "
                      "install --no-build-isolation .` or build it with scripts/setup.sh (the "
                      "package is assembled in build/python/quest, not imported from "
                      "python/quest)") from e

# Beside _build.py, wherever the package's sources are (an editable install serves them from the
# source tree and the built files from the environment).
_LIBRARY = os.path.join(os.path.dirname(os.path.abspath(_build.__file__)), "libquest_ops.so")
if not os.path.exists(_LIBRARY):
    raise ImportError(f"quest: {_LIBRARY} is missing; reinstall the package")

# The library links the LibTorch it was compiled against; under another torch it would fail to
# load with an undefined symbol, or load and misbehave. Say which instead.
if torch.__version__.split("+")[0] != _build.TORCH_VERSION:
    raise ImportError(f"quest: the operator library was built against torch {_build.TORCH_VERSION} "
                      f"but this environment has torch {torch.__version__}; reinstall quest here "
                      "(pip install --no-build-isolation --force-reinstall .)")
torch.ops.load_library(_LIBRARY)
