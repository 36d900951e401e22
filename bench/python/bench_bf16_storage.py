"""quest's fused kernel in bfloat16 against the same kernel on float32 copies and on float32
inputs, in one run (issue #33 item 1: bf16 read in place; bf16 products where the CPU has
AVX512_BF16, quest.runtime()["bf16_products"], else float32 arithmetic).

    PYTHONPATH=build/python .venv/bin/python bench/python/bench_bf16_storage.py --json out.json
    ... bench_bf16_storage.py --kind qk_layernorm   (LayerNorm parameters with gradients too)

Paths (kind quest unless --kind, forward+backward, fused backend):
  bf16     bf16 q, k, v given to quest.attention: read in place, dQ/dK/dV written in bf16
  copies   what the bf16 path did before: q.float(), k.float(), v.float() -> the float32 kernel ->
           .bfloat16() (autograd carries the copies both ways)
  fp32     float32 inputs (the float32 kernel alone)
Ratios are medians of per-round time ratios (every path timed in each round, order alternating).
"""
import argparse
import json
import statistics
import time

import torch

import quest

SHAPES = ["128,4,50,16", "64,4,65,32", "16,4,128,32", "32,12,197,64", "4,8,1024,64", "1,8,4096,64"]


def run(kind, params, q, k, v, dout):
    out = quest.attention(q, k, v, kind, backend="fused", **params)
    torch.autograd.grad(out, (q, k, v, *params.values()), dout)


def copies(kind, params, q, k, v, dout):
    out = quest.attention(q.float(), k.float(), v.float(), kind, backend="fused", **params).to(q.dtype)
    torch.autograd.grad(out, (q, k, v, *params.values()), dout)


def parameters(kind, h, d):
    """The kind's learned parameters (float32 master weights, as under autocast)."""
    if kind == "qknorm":
        return {"head_scale": torch.full((h,), 2.0, requires_grad=True)}
    if kind == "qk_layernorm":
        return {n: (torch.ones(d) if "weight" in n else torch.zeros(d)).requires_grad_()
                for n in ("q_norm_weight", "q_norm_bias", "k_norm_weight", "k_norm_bias")}
    return {}


def seconds(fn, min_time=0.1):
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_time or n < 3:
        fn()
        n += 1
    return elapsed / n


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json")
    p.add_argument("--kind", default="quest", choices=quest.KINDS)
    args = p.parse_args()
    torch.set_num_threads(2)
    rows = []
    rt = quest.runtime()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, SIMD target {rt['simd_target']}, "
          f"bf16 products {rt['bf16_products']}, kind {args.kind}")
    print("| B, H, N, D | bf16 GFLOP/s | bf16 / copies | bf16 / fp32 |")
    print("|---|---|---|---|")
    for shape in SHAPES:
        b, h, n, d = map(int, shape.split(","))
        g = torch.Generator().manual_seed(0)
        x32 = [torch.randn(b, h, n, d, generator=g).requires_grad_() for _ in range(3)]
        x16 = [t.detach().bfloat16().requires_grad_() for t in x32]
        d32 = torch.randn(b, h, n, d, generator=g)
        d16 = d32.bfloat16()
        par = parameters(args.kind, h, d)
        paths = {"bf16": lambda: run(args.kind, par, *x16, d16), "copies": lambda: copies(args.kind, par, *x16, d16),
                 "fp32": lambda: run(args.kind, par, *x32, d32)}
        times = {name: [] for name in paths}
        for r in range(args.rounds):
            for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
                times[name].append(seconds(paths[name]))
        flops = 3.5 * 4 * b * h * n * n * d
        row = {"shape": shape, "bf16_gflops": flops / statistics.median(times["bf16"]) / 1e9}
        for other in ("copies", "fp32"):
            row[f"bf16_over_{other}"] = statistics.median(o / t for t, o in zip(times["bf16"], times[other]))
        rows.append(row)
        print(f"| {shape} | {row['bf16_gflops']:.1f} | {row['bf16_over_copies']:.2f} | {row['bf16_over_fp32']:.2f} |",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "simd_target": rt["simd_target"], "kind": args.kind,
                       "bf16_products": rt["bf16_products"], "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
