"""torch's DistributedDataParallel + torchrun with quest inside (examples/python/train_ddp.py): two
ranks over gloo give one process's loss curve (eager and under torch.compile), and rank 0's
checkpoint loads in one process without DDP."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "python", "train_ddp.py")


def train(out, *extra, ranks=None, env_extra=None):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] \
        if ranks else [sys.executable]
    env = dict(os.environ, **(env_extra or {}))
    result = subprocess.run(launcher + [SCRIPT, "--out", str(out), *extra], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(os.path.join(out, "losses.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("compile", [False, True])
def test_two_ranks_give_one_process_loss_curve(tmp_path, compile):
    extra = ["--compile"] if compile else []
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    one = train(tmp_path / "one", *extra, env_extra=env)
    two = train(tmp_path / "two", *extra, ranks=2, env_extra=env)
    assert one["world"] == 1 and two["world"] == 2 and len(two["losses"]) == 30
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=0, atol=1e-5)
    assert two["losses"][-1] < two["losses"][0] - 0.1  # it learns
    assert two["eval_accuracy"] == pytest.approx(one["eval_accuracy"], abs=1e-6)

    # rank 0's checkpoint: the plain module's state_dict, loaded in this process without DDP
    spec = importlib.util.spec_from_file_location("train_ddp", SCRIPT)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model = example.Classifier(vocab=16, dim=32, heads=4, kind="quest")
    model.load_state_dict(torch.load(tmp_path / "two" / "model.pt"))
    tokens, labels = example.dataset(256, 12, 16, seed=2)
    with torch.no_grad():
        accuracy = (model(tokens).argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(two["eval_accuracy"], abs=1e-6)
    assert not os.path.exists(tmp_path / "two" / "model.pt.tmp")
