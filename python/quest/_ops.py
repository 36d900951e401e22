"""Loads libquest_ops.so (built from src/torch/ops.cpp next to this file) into torch's dispatcher."""
import os

import torch

_LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libquest_ops.so")

if not os.path.exists(_LIBRARY):
    raise ImportError(f"quest: {_LIBRARY} is missing; build it with scripts/setup.sh (the package "
                      "is assembled in build/python/quest, not imported from python/quest)")
torch.ops.load_library(_LIBRARY)
