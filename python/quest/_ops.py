"""Loads libquest_ops.so (built from src/torch/ops.cpp next to this file) into torch's dispatcher."""
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_LIBRARY = os.path.join(_HERE, "libquest_ops.so")

if not os.path.exists(_LIBRARY):
    raise ImportError(f"quest: {_LIBRARY} is missing; install the package with `pip install "
                      "--no-build-isolation .` or build it with scripts/setup.sh (the package is "
                      "assembled in build/python/quest, not imported from python/quest)")

from ._build import TORCH_VERSION  # noqa: E402  (written next to the library at build time)

# The library links the LibTorch it was compiled against; under another torch it would fail to
# load with an undefined symbol, or load and misbehave. Say which instead.
if torch.__version__.split("+")[0] != TORCH_VERSION:
    raise ImportError(f"quest: the operator library was built against torch {TORCH_VERSION} but "
                      f"this environment has torch {torch.__version__}; reinstall quest here "
                      "(pip install --no-build-isolation --force-reinstall .)")
torch.ops.load_library(_LIBRARY)
