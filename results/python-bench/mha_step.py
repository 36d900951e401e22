#!/usr/bin/env python3
"""Milliseconds per forward + backward of quest.MultiheadAttention used as self-attention
(mha(x, x, x), batch_first, training, need_weights=False, kind quest), median of 7 samples of 20
steps after a warm-up; one line per shape: "B,N,E,H ms" (default shapes: the ViT's two and the
language model's). MHA_THREADS: torch.set_num_threads (default 2; 0 leaves torch's default).
Run by measure_mha.sh (two versions of the module) and measure_threads.sh (thread set-ups)."""
import os
import statistics
import sys
import time

import torch

import quest

THREADS = int(os.environ.get("MHA_THREADS", "2"))  # 0: torch's default
if THREADS > 0:
    torch.set_num_threads(THREADS)
for shape in sys.argv[1:] or ["128,50,64,4", "64,65,128,4", "16,128,128,4"]:
    b, n, e, h = (int(x) for x in shape.split(","))
    torch.manual_seed(0)
    m = quest.MultiheadAttention(e, h, kind="quest", batch_first=True).train()
    x = torch.randn(b, n, e, requires_grad=True)
    w = torch.randn(b, n, e)

    def step():
        out, _ = m(x, x, x, need_weights=False)
        (out * w).sum().backward()

    for _ in range(5):
        step()
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(20):
            step()
        samples.append((time.perf_counter() - t0) / 20 * 1e3)
    print(f"{shape} {statistics.median(samples):.3f}")
