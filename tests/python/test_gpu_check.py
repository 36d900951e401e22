"""bench/python/gpu_check.py, the device check, run on the CPU (its forced sdpa path, small speed
shapes): a later session with a GPU machine runs it unchanged there, so it must not rot here."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_check_runs_and_passes_on_cpu(tmp_path):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "python", "gpu_check.py"),
                        "--device", "cpu", "--out", str(tmp_path), "--quick", "--rounds", "1",
                        "--reps", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["backend"] == "sdpa" and len(report["correctness"]) == 80
    assert all(row["ok"] and row["backend"] == "sdpa" for row in report["correctness"])
    assert {row["mode"] for row in report["speed"]} == {"fwd", "fwd_bwd"}
    assert "| quest |" in (tmp_path / "gpu-check.md").read_text()
