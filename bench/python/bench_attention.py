"""quest.attention from Python against the peers a PyTorch user would run instead.

    PYTHONPATH=build/python .venv/bin/python bench/python/bench_attention.py --json out.json

Paths, each computing the same math (for quest: keys normalised first, scale 1):
  fused   quest's fused kernel (quest.attention, backend="fused")
  sdpa    torch's F.scaled_dot_product_attention (its CPU flash kernel) on F.normalize(k)
  flex    FlexAttention (torch.compile'd flex_attention) on F.normalize(k), where torch supports it
  hand    the composite a user writes: (F.normalize(k)) -> matmul -> softmax -> matmul
GFLOP/s by the FlashAttention convention (forward 4·B·H·N²·D, forward+backward 3.5× that); ratios
are medians of per-round time ratios, every path timed in each round (order alternating) so shared
noise cancels; sgemm 1024³ through torch.mm (the BLAS named in the output) is sampled between
rounds. A shape "B,H,N,D" or, grouped-query, "B,Hq/Hk,N,D".
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

SHAPES = ["128,4,50,16", "64,4,65,32", "16,4,128,32", "32,12,197,64", "4,8,1024,64",
          "1,8,4096,64", "4,8/2,1024,64"]
PATHS = ["fused", "sdpa", "flex", "hand"]


def keys(k, kind: str):
    return F.normalize(k, dim=-1, eps=1e-6) if kind == "quest" else k


def scale_of(kind: str, d: int) -> float:
    return 1.0 if kind == "quest" else 1.0 / math.sqrt(d)


def repeat_kv(t, q):
    """Each key/value head repeated for its query heads (what the composite must do for GQA)."""
    return t.repeat_interleave(q.size(1) // t.size(1), 1) if t.size(1) != q.size(1) else t


def hand(q, k, v, kind: str):
    s = (q @ repeat_kv(keys(k, kind), q).transpose(-2, -1)) * scale_of(kind, q.size(-1))
    return torch.softmax(s, -1) @ repeat_kv(v, q)


def fused(q, k, v, kind: str):
    return quest.attention(q, k, v, kind, backend="fused", enable_gqa=k.size(1) != q.size(1))


def sdpa(q, k, v, kind: str):
    return F.scaled_dot_product_attention(q, keys(k, kind), v, scale=scale_of(kind, q.size(-1)),
                                          enable_gqa=k.size(1) != q.size(1))


_flex = None


def flex(q, k, v, kind: str):
    global _flex
    if _flex is None:
        from torch.nn.attention.flex_attention import flex_attention
        _flex = torch.compile(flex_attention, dynamic=False)
    return _flex(q, keys(k, kind), v, scale=scale_of(kind, q.size(-1)),
                 enable_gqa=k.size(1) != q.size(1))


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
    if not backward:  # inputs detached: FlexAttention on CPU refuses ones that require grad
        with torch.no_grad():
            path(q.detach(), k.detach(), v.detach(), kind)
        return
    for t in (q, k, v):
        t.grad = None
    path(q, k, v, kind).backward(dout)


def parse_shape(shape: str):
    b, h, n, d = shape.split(",")
    hq, _, hk = h.partition("/")
    return int(b), int(hq), int(hk or hq), int(n), int(d)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=SHAPES, help="B,H,N,D or B,Hq/Hk,N,D")
    p.add_argument("--kinds", nargs="+", default=["standard", "quest"], choices=quest.KINDS)
    p.add_argument("--paths", nargs="+", default=PATHS, choices=PATHS)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--min-time", type=float, default=0.1, help="seconds per sample")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch's intra-op threads (default: every hardware thread, as quest bench; "
                        "torch's own default is the physical cores)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    functions = {"fused": fused, "sdpa": sdpa, "flex": flex, "hand": hand}

    info = quest.runtime()
    header = {"threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": args.dtype,
              "simd_target": info["simd_target"], "bf16_products": info["bf16_products"], "blas": info["blas"],
              "blas_core": info["blas_core"], "paths": args.paths,
              "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "")}
    print(json.dumps(header), flush=True)
    rows, sgemm = [], []
    for shape in args.shapes:
        b, hq, hk, n, d = parse_shape(shape)
        flops = 4 * b * hq * n * n * d
        for kind in args.kinds:
            g = torch.Generator().manual_seed(0)
            q = torch.randn(b, hq, n, d, generator=g).to(dtype).requires_grad_()
            k, v = (torch.randn(b, hk, n, d, generator=g).to(dtype).requires_grad_() for _ in range(2))
            dout = torch.randn(b, hq, n, d, generator=g).to(dtype)
            row = {"shape": shape, "kind": kind}
            for mode in args.modes:
                backward, work = mode == "fwd_bwd", flops * (3.5 if mode == "fwd_bwd" else 1)
                paths = []
                for name in args.paths:  # warm-up; a path that cannot run this says why
                    try:
                        step(functions[name], q, k, v, kind, backward, dout)
                        paths.append(name)
                    except Exception as e:  # noqa: BLE001 (recorded, not hidden)
                        row[f"{mode}_{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                times = {name: [] for name in paths}
                for r in range(args.repeats):
                    for name in (paths if r % 2 == 0 else paths[::-1]):
                        times[name].append(seconds_per_call(
                            lambda: step(functions[name], q, k, v, kind, backward, dout), args.min_time))
                    sgemm.append(sgemm_gflops())
                for name in paths:
                    row[f"{mode}_{name}_gflops"] = work / statistics.median(times[name]) / 1e9
                    if name != "fused" and "fused" in times:
                        row[f"{mode}_fused_over_{name}"] = statistics.median(
                            tp / tf for tf, tp in zip(times["fused"], times[name]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    sgemm_median = statistics.median(sgemm) if sgemm else float("nan")
    for row in rows:
        for mode in args.modes:
            if f"{mode}_fused_gflops" in row:
                row[f"{mode}_fused_over_sgemm"] = row[f"{mode}_fused_gflops"] / sgemm_median
    summary = {**header, "sgemm_1024_gflops_median": sgemm_median,
               "sgemm_1024_gflops_range": [min(sgemm, default=0), max(sgemm, default=0)], "rows": rows}

    print(f"\nsgemm 1024^3 (torch.mm, {info['blas']}): median {sgemm_median:.1f} GFLOP/s")
    peers = [name for name in args.paths if name != "fused"]
    for mode in args.modes:
        print(f"\n{mode} ({args.dtype}), GFLOP/s and fused / peer (n/a: the path cannot run it)")
        print("| B, H, N, D | kind | " + " | ".join(args.paths) + " | " +
              " | ".join(f"fused / {p}" for p in peers) + " |")
        print("|---|---|" + "---|" * (len(args.paths) + len(peers)))
        for r in rows:
            cells = [f"{r[f'{mode}_{p}_gflops']:.1f}" if f"{mode}_{p}_gflops" in r else "n/a"
                     for p in args.paths]
            ratios = [f"{r[f'{mode}_fused_over_{p}']:.2f}" if f"{mode}_fused_over_{p}" in r else "n/a"
                      for p in peers]
            print(f"| {r['shape'].replace(',', ', ')} | {r['kind']} | " + " | ".join(cells) + " | " +
                  " | ".join(ratios) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
