#!/usr/bin/env python3
"""A Python replica of configs/full.json's ViT (conv_bn stem, dim 64, depth 4, 4 heads, quest
attention through quest.nn.MultiheadAttention) for torch.profiler: images/s of 40 AdamW steps of
batch 128 (random data, after 5 warm-up steps), then a profile of 10 steps (unless NOPROF=1).
STEM32=1 runs the conv stem in float32 under autocast.
Usage: [STEM32=1] [NOPROF=1] PYTHONPATH=build/python python results/training-step/vit_replica.py fp32|bf16"""
import os
import sys
import time

import torch
import torch.nn as nn

import quest

STEM32 = os.environ.get("STEM32") == "1"
torch.set_num_threads(2)
dim, depth, heads = 64, 4, 4


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = quest.nn.MultiheadAttention(dim, heads, batch_first=True, kind="quest")
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.Conv2d(64, 64, 1))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, 50, dim))
        self.blocks = nn.ModuleList([Block() for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        if STEM32:
            with torch.autocast("cpu", enabled=False):
                x = self.stem(x.float())
        else:
            x = self.stem(x)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.size(0), 1, -1), x], 1) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x[:, 0]))


model = ViT()
opt = torch.optim.AdamW(model.parameters(), 1e-3)
x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
bf16 = sys.argv[1] == "bf16"


def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


for _ in range(5):
    step()
t = time.perf_counter()
for _ in range(40):
    step()
print(sys.argv[1], "stem float32" if STEM32 else "", "images/s", round(40 * 128 / (time.perf_counter() - t), 1))
if os.environ.get("NOPROF") != "1":
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(10):
            step()
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
