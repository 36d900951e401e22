import os
import sys

# The oracle sits beside the tests; quest itself comes from build/python (PYTHONPATH).
sys.path.insert(0, os.path.dirname(__file__))
