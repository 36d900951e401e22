#!/usr/bin/env python3
"""What the default check_finite costs a forward: quest attention with check_finite on and off,
contiguous (B, H, N, D) q, k, v, the same as strided views of one (B, N, 3 x H x D) projection,
and the projection itself (attention_packed). Median of REPS timed calls after 5 warm-up calls,
ROUNDS rounds, one thread (OMP-free: torch.set_num_threads). Pause anything else on the machine.
Usage: PYTHONPATH=build/python python results/peers/check_finite_cost.py [B H N D] [rounds]"""
import sys
import time

import torch

import quest

B, H, N, D = (int(x) for x in sys.argv[1:5]) if len(sys.argv) >= 5 else (128, 4, 50, 16)
rounds = int(sys.argv[5]) if len(sys.argv) >= 6 else 2
REPS = 60
torch.set_num_threads(1)


def median_ms(f):
    for _ in range(5):
        f()
    ts = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[REPS // 2] * 1e3


qkv = torch.randn(B, N, 3 * H * D)
p5 = qkv.view(B, N, 3, H, D)
strided = [p5[:, :, i].transpose(1, 2) for i in range(3)]
contiguous = [t.contiguous() for t in strided]
cases = {"contiguous": lambda check: quest.functional.attention(*contiguous, check_finite=check),
         "strided": lambda check: quest.functional.attention(*strided, check_finite=check),
         "packed": lambda check: quest.functional.attention_packed(qkv, H, check_finite=check)}
print("round,layout,check_ms,nocheck_ms,check_over_nocheck")
with torch.no_grad():
    for r in range(1, rounds + 1):
        for name, f in cases.items():
            on, off = median_ms(lambda: f(True)), median_ms(lambda: f(False))
            print(f"{r},{name},{on:.3f},{off:.3f},{on / off:.3f}", flush=True)
