"""Train a small Vision Transformer on Fashion-MNIST with QUEST attention.

    .venv/bin/python examples/python/train_vit.py --kind quest   # after pip install
    .venv/bin/python examples/python/train_vit.py --compile      # under torch.compile

With --compile the model trains under torch.compile (fullgraph: quest's operators are dispatcher
ops with fake kernels, so the converted model compiles without a graph break), and before training
the same steps are timed eager and compiled on copies of the model (compilation excluded).

A PyTorch model is built as usual — torchvision's VisionTransformer where a torchvision that
imports beside this torch is installed, else the same shape from torch.nn.TransformerEncoder —
then quest.convert swaps every torch.nn.MultiheadAttention for quest's; the rest of the training
loop is plain PyTorch. The data
are the IDX files of Debian's dataset-fashion-mnist package, read here with numpy.
"""
import argparse
import copy
import gzip
import os
import statistics
import time

import numpy as np
import torch
from torch import nn

import quest

DATA_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzip) as an array, its header checked against its size."""
    if not os.path.exists(path):
        raise SystemExit(f"{path} is missing: install Debian's dataset-fashion-mnist package")
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SystemExit(f"{path}: not an IDX file of unsigned bytes")
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(shape)):
        raise SystemExit(f"{path}: header says {shape}, file holds {body.size} values")
    return body.reshape(shape)


def load(split: str, limit: int):
    images = read_idx(os.path.join(DATA_DIR, f"{split}-images-idx3-ubyte.gz"))[:limit]
    labels = read_idx(os.path.join(DATA_DIR, f"{split}-labels-idx1-ubyte.gz"))[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return (x - 0.2860) / 0.3530, torch.from_numpy(labels.astype(np.int64))


class EncoderViT(nn.Module):
    """torchvision's ViT layout (class token, learned positions, pre-norm encoder layers) built
    from torch.nn.TransformerEncoder."""

    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128):
        super().__init__()
        self.conv_proj = nn.Conv2d(1, dim, kernel_size=7, stride=7)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim),
                                             enable_nested_tensor=False)
        self.heads = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (B, 16, dim)
        x = torch.cat([self.class_token.expand(x.size(0), -1, -1), x], 1) + self.pos_embedding
        return self.heads(self.encoder(x)[:, 0])


def build_model(kind: str) -> nn.Module:
    try:  # a torchvision built for another torch raises RuntimeError at import
        import torchvision
        model = torchvision.models.VisionTransformer(
            image_size=28, patch_size=7, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128,
            num_classes=10)
        model.conv_proj = nn.Conv2d(1, 64, kernel_size=7, stride=7)  # grayscale patches
        print("model: torchvision's VisionTransformer")
    except Exception:  # noqa: BLE001
        model = EncoderViT()
        print("model: torch.nn.TransformerEncoder ViT (no torchvision that imports here)")
    return quest.convert(model, kind=kind)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
                  for i in range(0, len(x), batch))
    return correct / len(x)


def train_step(model, optimizer, x, y) -> torch.Tensor:
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def time_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, steps: int, compile: bool):
    """Median seconds of a training step (forward, backward, AdamW) on a copy of the model; with
    compile, the model under torch.compile (its backward compiled with it; AdamW eager), timed
    after the compiling steps."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model, fullgraph=True) if compile else model
    times = []
    for i in range(steps + 3):  # 3 warm-up steps (with compile: the compilations)
        j = (i * batch) % max(1, len(x) - batch)
        start = time.perf_counter()
        train_step(forward, optimizer, x[j:j + batch], y[j:j + batch])
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="quest", choices=quest.KINDS)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="train under torch.compile (eager vs compiled timed first)")
    p.add_argument("--timing-steps", type=int, default=20, help="with --compile: steps timed each way")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    train_x, train_y = load("train", args.train_size)
    test_x, test_y = load("t10k", args.test_size)
    model = build_model(args.kind)
    print(f"kind={args.kind}: {sum(isinstance(m, quest.MultiheadAttention) for m in model.modules())}"
          f" attention modules converted, {sum(p.numel() for p in model.parameters())} parameters")
    forward = model
    if args.compile:
        eager = time_steps(model, train_x, train_y, args.batch_size, args.timing_steps, compile=False)
        compiled = time_steps(model, train_x, train_y, args.batch_size, args.timing_steps, compile=True)
        print(f"training step, median of {args.timing_steps}: eager {eager * 1e3:.1f} ms, torch.compile "
              f"{compiled * 1e3:.1f} ms ({eager / compiled:.2f}x); per epoch of {len(train_x)} images: "
              f"eager {eager * len(train_x) / args.batch_size:.1f} s, compiled "
              f"{compiled * len(train_x) / args.batch_size:.1f} s")
        forward = torch.compile(model, fullgraph=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * ((len(train_x) + args.batch_size - 1) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)

    for epoch in range(args.epochs):
        model.train()
        start, total = time.time(), 0.0
        order = torch.randperm(len(train_x))
        for i in range(0, len(train_x), args.batch_size):
            idx = order[i:i + args.batch_size]
            loss = train_step(forward, optimizer, train_x[idx], train_y[idx])
            schedule.step()
            total += loss.item() * len(idx)
        seconds = time.time() - start
        note = " (includes compiling)" if args.compile and epoch == 0 else ""
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {total / len(train_x):.4f}, "
              f"{len(train_x) / seconds:.0f} img/s, {seconds:.1f} s{note}")

    print(f"test accuracy: {accuracy(model, test_x, test_y):.4f}")
    with quest.record_diagnostics(model) as recording:
        accuracy(model, test_x[:500], test_y[:500])
    print("per-head attention diagnostics on 500 test images (quest.record_diagnostics):")
    for name, d in recording.items():
        print(f"{name}:\n{d}")


if __name__ == "__main__":
    main()
