"""quest.attention from Python against what a PyTorch user writes by hand.

    PYTHONPATH=build/python .venv/bin/python bench/python/bench_attention.py --json out.json

Hand-written: (F.normalize(k, dim=-1) for quest) -> matmul -> softmax -> matmul. GFLOP/s by the
FlashAttention convention (forward 4·B·H·N²·D, forward+backward 3.5× that); ratios are medians of
per-pair time ratios, the two paths timed alternately in the same run so shared noise cancels;
sgemm 1024³ through torch.mm (the BLAS named in the output) is sampled between the measurements.
"""
import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

import quest

SHAPES = ["64,4,65,32", "32,12,197,64", "4,8,1024,64", "1,8,4096,64"]


def hand_written(q, k, v, kind: str):
    if kind == "quest":
        s = q @ F.normalize(k, dim=-1).transpose(-2, -1)
    else:
        s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    return torch.softmax(s, -1) @ v


def fused(q, k, v, kind: str):
    return quest.attention(q, k, v, kind, backend="fused")


def seconds_per_call(fn, min_time: float) -> float:
    """Mean time of back-to-back calls over at least min_time seconds (at least one call)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def sgemm_gflops(n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / seconds_per_call(lambda: torch.mm(a, b), 0.1) / 1e9


def step(path, q, k, v, kind, backward: bool, dout):
    if not backward:
        with torch.no_grad():
            path(q, k, v, kind)
        return
    for t in (q, k, v):
        t.grad = None
    path(q, k, v, kind).backward(dout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=SHAPES, help="B,H,N,D")
    p.add_argument("--kinds", nargs="+", default=["standard", "quest"], choices=quest.KINDS)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--min-time", type=float, default=0.1, help="seconds per sample")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch's intra-op threads (default: every hardware thread, as quest bench; "
                        "torch's own default is the physical cores)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    info = quest.runtime()
    header = {"threads": torch.get_num_threads(), "torch": torch.__version__,
              "simd_target": info["simd_target"], "blas": info["blas"],
              "blas_core": info["blas_core"],
              "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "")}
    print(json.dumps(header))
    rows, sgemm = [], []
    for shape in args.shapes:
        b, h, n, d = (int(x) for x in shape.split(","))
        flops = 4 * b * h * n * n * d
        for kind in args.kinds:
            torch.manual_seed(0)
            q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
            dout = torch.randn(b, h, n, d)
            row = {"shape": shape, "kind": kind}
            for mode, backward, work in (("fwd", False, flops), ("fwd_bwd", True, 3.5 * flops)):
                times = {"fused": [], "hand": []}
                for path in (fused, hand_written):  # warm-up
                    step(path, q, k, v, kind, backward, dout)
                for r in range(args.repeats):
                    order = [("fused", fused), ("hand", hand_written)]
                    for name, path in (order if r % 2 == 0 else order[::-1]):
                        times[name].append(seconds_per_call(
                            lambda: step(path, q, k, v, kind, backward, dout), args.min_time))
                    sgemm.append(sgemm_gflops())
                row[f"{mode}_fused_gflops"] = work / statistics.median(times["fused"]) / 1e9
                row[f"{mode}_hand_gflops"] = work / statistics.median(times["hand"]) / 1e9
                row[f"{mode}_fused_over_hand"] = statistics.median(
                    th / tf for tf, th in zip(times["fused"], times["hand"]))
            rows.append(row)
            print(json.dumps(row))
    sgemm_median = statistics.median(sgemm)
    for row in rows:
        for mode in ("fwd", "fwd_bwd"):
            row[f"{mode}_fused_over_sgemm"] = row[f"{mode}_fused_gflops"] / sgemm_median
    summary = {**header, "sgemm_1024_gflops_median": sgemm_median,
               "sgemm_1024_gflops_range": [min(sgemm), max(sgemm)], "rows": rows}

    print(f"\nsgemm 1024^3 (torch.mm, OpenBLAS core {info['blas_core']}): median "
          f"{sgemm_median:.1f} GFLOP/s, range {min(sgemm):.1f}-{max(sgemm):.1f}")
    print("| B, H, N, D | kind | fused fwd | fused fwd+bwd | fwd / hand | f+b / hand | "
          "fwd / sgemm | f+b / sgemm |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape'].replace(',', ', ')} | {r['kind']} | {r['fwd_fused_gflops']:.1f} | "
              f"{r['fwd_bwd_fused_gflops']:.1f} | {r['fwd_fused_over_hand']:.2f} | "
              f"{r['fwd_bwd_fused_over_hand']:.2f} | {r['fwd_fused_over_sgemm']:.2f} | "
              f"{r['fwd_bwd_fused_over_sgemm']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
