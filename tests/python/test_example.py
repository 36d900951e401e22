"""examples/python/train_vit.py runs end to end (tiny sizes): trains, reports accuracy and the
per-head diagnostics."""
import os
import re
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_example_trains_and_reports():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "python", "train_vit.py"), "--kind",
         "quest", "--epochs", "2", "--train-size", "2000", "--test-size", "1000"],
        capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    assert "4 attention modules converted" in result.stdout
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", result.stdout).group(1))
    assert accuracy > 0.4, result.stdout  # 10 classes: chance is 0.1
    assert result.stdout.count("logit_abs_max") == 4
