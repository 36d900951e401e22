import os
import sys

# The oracle sits beside the tests; quest itself comes from build/python (PYTHONPATH).
sys.path.insert(0, os.path.dirname(__file__))

# Inductor's on-disk caches key a graph on its FX code, not on the C++ Meta kernels of quest's
# operators: a graph compiled against an earlier build would be reused with that build's output
# shapes. Each test session compiles into a fresh cache (set before torch is imported).
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="quest-inductor-")
atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
