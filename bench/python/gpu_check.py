"""quest on a GPU (or any non-CPU device): correctness of every kind, and speed against torch's SDPA.

    PYTHONPATH=<quest's build>/python python bench/python/gpu_check.py --out DIR

On a device other than the CPU quest runs each kind through torch's own SDPA on the kind's
normalised q and k (backend "sdpa": flash / memory-efficient / cuDNN serve it). This checks, in one
run of a few minutes (results/gpu/run.sh is the device command that builds quest and runs it):
  1. correctness: every kind x float32/bfloat16 x causal x GQA x padding, output and the gradients
     of q, k, v and the kind's parameters, against the composite in float64 on the same device;
     the relative error max|got - want| / max|want| against a bound per dtype;
  2. diagnostics on the device (exact norms; max logit and entropy from a chunked pass) against the
     CPU fused kernel's on the same inputs; quest.MultiheadAttention forward and backward on the
     device against the same module on the CPU; torch.compile(fullgraph=True) on the device;
  3. speed, forward and forward+backward, float32 and bfloat16, at three shapes: quest
     (quest.scaled_dot_product_attention, kind "quest"), the same math written by hand with
     torch's SDPA (SDPA(q, F.normalize(k), v, scale=1)) and plain standard SDPA. Times are medians
     of CUDA-event-timed rounds; GFLOP/s by the FlashAttention convention (forward 4*B*H*N^2*D,
     forward+backward 3.5x that); ratios are medians of per-round ratios.
Writes DIR/gpu-check.json and DIR/gpu-check.md; exits 1 if a correctness check fails.
Runs on CPU too (--device cpu, backend "sdpa" forced), which is how it is tested without a GPU.
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import quest

# Relative error bounds (max|got - want| / max|want|) against float64: float32 and bfloat16
# rounding of the inputs alone is 2^-24 / 2^-8 relative; SDPA's blocked reductions add a few.
BOUNDS = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
SHAPES = [(32, 12, 197, 64), (4, 8, 1024, 64), (1, 8, 4096, 64)]


def rel_err(got, want, floor=1.0):
    """max|got - want| / max|want|, the scale floored at `floor`: a gradient that is zero in exact
    arithmetic (QK-LayerNorm's key bias shifts every logit of a row alike) is compared absolutely.
    A parameter's gradient is a sum over rows of per-row terms of order 1, each rounded to the
    input dtype when SDPA attends in bfloat16, so its error grows as sqrt(rows): that is its floor."""
    want = want.double()
    return (got.double() - want).abs().max().item() / max(want.abs().max().item(), floor)


def kind_options(kind, hq, d, device):
    """The kind's parameters in float32 (as a module under autocast keeps them)."""
    g = torch.Generator().manual_seed(7)
    o = {}
    if kind == "qknorm":
        o["head_scale"] = (1 + torch.rand(hq, generator=g)).to(device)
    if kind == "qk_layernorm":
        o["q_norm_weight"] = (0.5 + torch.rand(d, generator=g)).to(device)
        o["k_norm_bias"] = (0.1 * torch.randn(d, generator=g)).to(device)
    return o


def forward_backward(fn, inputs, params):
    """Output and the gradients of inputs and params for a fixed random output gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    ps = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    out = fn(*leaves, **ps)
    g = torch.Generator(device="cpu").manual_seed(1)
    dout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    out.backward(dout)
    return [out] + [t.grad for t in leaves] + [ps[n].grad for n in sorted(ps)]


def correctness(device, backend):
    rows = []
    b, hq, n, d = 2, 4, 77, 64
    for kind in quest.KINDS:
        for dtype in (torch.float32, torch.bfloat16):
            for causal in (False, True):
                for hk in (hq, 2):  # MHA, GQA
                    for padded in (False, True):
                        g = torch.Generator().manual_seed(len(rows))
                        q = torch.randn(b, hq, n, d, generator=g, dtype=torch.float64)
                        k = 2 * torch.randn(b, hk, n, d, generator=g, dtype=torch.float64)
                        v = torch.randn(b, hk, n, d, generator=g, dtype=torch.float64)
                        pad = None
                        if padded:
                            pad = torch.zeros(b, n, dtype=torch.bool, device=device)
                            pad[0, -9:] = True
                        o = dict(kind=kind, causal=causal, enable_gqa=hk != hq, key_padding_mask=pad)
                        params = kind_options(kind, hq, d, device)
                        # Rounded to the dtype first: both sides see the same inputs.
                        low = [t.to(dtype).to(device) for t in (q, k, v)]
                        chosen = quest.select_backend(*low, **o, **params, backend=backend)[0]
                        got = forward_backward(
                            lambda q, k, v, **p: quest.attention(q, k, v, backend=backend, **o, **p),
                            low, params)
                        want = forward_backward(
                            lambda q, k, v, **p: quest.attention(q, k, v, backend="composite", **o, **p),
                            [t.double() for t in low], {n: p.double() for n, p in params.items()})
                        rows_summed = math.sqrt(b * hq * n)  # a parameter's gradient: over (B, H, N)
                        errs = [rel_err(a, w, 1.0 if i < 4 else rows_summed)
                                for i, (a, w) in enumerate(zip(got, want))]
                        names = ["out", "dq", "dk", "dv"] + ["d" + p for p in sorted(params)]
                        ok = (all(math.isfinite(e) and e <= BOUNDS[dtype] for e in errs)
                              and all(a.dtype == (dtype if i < 4 else torch.float32)
                                      for i, a in enumerate(got)))
                        rows.append({"kind": kind, "dtype": str(dtype).split(".")[1], "causal": causal,
                                     "gqa": hk != hq, "padded": padded, "backend": chosen,
                                     "errors": dict(zip(names, errs)), "bound": BOUNDS[dtype], "ok": ok})
    return rows


def diagnostics_check(device, backend):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 300, 64, generator=g) * s for s in (3, 2, 1))
    out = {}
    for kind in ("standard", "quest"):
        _, _, want = quest.attention_forward(q, k, v, kind, causal=True, need_diagnostics=True,
                                             backend="fused")
        _, _, got = quest.attention_forward(q.to(device), k.to(device), v.to(device), kind,
                                            causal=True, need_diagnostics=True, backend=backend)
        err = ((got.cpu() - want).abs() / want.abs().clamp_min(1e-6)).max().item()
        out[kind] = {"max_rel_err": err, "ok": err <= 1e-4}
    return out


def finite_check(device):
    """The default NaN/Inf check on the device (one host synchronisation for all the tensors):
    every input, fp32 and bf16, NaN and Inf, names the tensor; unchecked, NaN propagates."""
    failures = []
    for dtype in (torch.float32, torch.bfloat16):
        for name in ("q", "k", "v"):
            for bad in (float("nan"), float("inf")):
                t = {n: torch.randn(2, 4, 33, 16, device=device, dtype=dtype) for n in ("q", "k", "v")}
                t[name][1, 2, 5, 3] = bad
                try:
                    quest.attention(t["q"], t["k"], t["v"], "quest")
                    failures.append(f"{dtype} {name}={bad}: not caught")
                except RuntimeError as e:
                    if f"{name} contains NaN or Inf" not in str(e):
                        failures.append(f"{dtype} {name}={bad}: {e}")
                if bad != bad:  # NaN: propagates unchecked, as in torch's own SDPA
                    out = quest.attention(t["q"], t["k"], t["v"], "quest", check_finite=False)
                    if not out.isnan().any().item():
                        failures.append(f"{dtype} {name}=nan unchecked: no NaN in the output")
    return {"failures": failures, "ok": not failures}


def module_check(device):
    torch.manual_seed(0)
    m = quest.MultiheadAttention(128, 4, kind="quest", batch_first=True, num_kv_heads=2)
    x = torch.randn(3, 50, 128)
    y = m(x, x, x, need_weights=False)[0]
    y.square().sum().backward()
    want = [y] + [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    md = m.to(device)
    yd = md(x.to(device), x.to(device), x.to(device), need_weights=False)[0]
    yd.square().sum().backward()
    got = [yd] + [p.grad for p in md.parameters()]
    err = max(rel_err(a.cpu(), w) for a, w in zip(got, want))
    return {"max_rel_err": err, "ok": err <= 1e-4}


def compile_check(device, backend):
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 4, 64, 32, generator=g).to(device).requires_grad_() for _ in range(3))

    def f(q, k, v):
        return quest.scaled_dot_product_attention(q, k, v, is_causal=True, kind="quest",
                                                  backend=backend)

    start = time.perf_counter()
    try:
        compiled = torch.compile(f, fullgraph=True)
        got = compiled(q, k, v)
        (dq,) = torch.autograd.grad(got.sum(), q)
    except Exception as e:  # noqa: BLE001  (reported, not hidden: ok is False)
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    want = f(q, k, v)
    (dq_want,) = torch.autograd.grad(want.sum(), q)
    err = max(rel_err(got, want), rel_err(dq, dq_want))
    return {"max_rel_err": err, "ok": err <= 1e-5, "seconds": time.perf_counter() - start}


def timer(device):
    if device.type == "cuda":
        def run(fn, reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3 / reps
    else:
        def run(fn, reps):
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            return (time.perf_counter() - start) / reps
    return run


def speed(device, shapes, rounds, reps):
    run = timer(device)
    paths = {
        "quest": lambda q, k, v: quest.scaled_dot_product_attention(q, k, v, kind="quest"),
        # Without the default NaN/Inf check, which off the CPU costs one host synchronisation.
        "quest_unchecked": lambda q, k, v: quest.scaled_dot_product_attention(q, k, v, kind="quest",
                                                                              check_finite=False),
        "by_hand": lambda q, k, v: F.scaled_dot_product_attention(q, F.normalize(k, dim=-1, eps=1e-6),
                                                                  v, scale=1.0),
        "standard": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
    }
    rows = []
    for shape in shapes:
        b, h, n, d = shape
        flops = 4 * b * h * n * n * d
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(0)
            q, k, v, dout = (torch.randn(b, h, n, d, generator=g).to(device, dtype) for _ in range(4))
            for t in (q, k, v):
                t.requires_grad_()
            for mode in ("fwd", "fwd_bwd"):
                if mode == "fwd":
                    fns = {name: (lambda fn=fn: _no_grad(fn, q, k, v)) for name, fn in paths.items()}
                else:
                    fns = {name: (lambda fn=fn: torch.autograd.grad(fn(q, k, v), (q, k, v), dout))
                           for name, fn in paths.items()}
                for fn in fns.values():  # warm-up
                    run(fn, 3)
                times = {name: [] for name in fns}
                order = list(fns)
                for r in range(rounds):
                    for name in (order if r % 2 == 0 else order[::-1]):
                        times[name].append(run(fns[name], reps))
                work = flops * (3.5 if mode == "fwd_bwd" else 1)
                row = {"shape": ",".join(map(str, shape)), "dtype": str(dtype).split(".")[1],
                       "mode": mode}
                for name, ts in times.items():
                    row[name + "_ms"] = statistics.median(ts) * 1e3
                    row[name + "_gflops"] = work / statistics.median(ts) / 1e9
                for other in ("by_hand", "standard", "quest_unchecked"):
                    row["quest_vs_" + other] = statistics.median(
                        o / t for t, o in zip(times["quest"], times[other]))
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def profile(device, shape, out_dir):
    """Where quest's bfloat16 forward+backward spends its time at one shape: torch.profiler's
    table of the top kernels and operators, written to profile.txt (the speed table's why)."""
    g = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(*shape, generator=g).to(device, torch.bfloat16) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    def step():
        torch.autograd.grad(quest.scaled_dot_product_attention(q, k, v, kind="quest"), (q, k, v), dout)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=20)
    path = os.path.join(out_dir, "profile.txt")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write(f"quest bfloat16 forward+backward at {shape}, 10 steps\n{table}\n")
    print(table, flush=True)
    return path


def _no_grad(fn, q, k, v):
    with torch.no_grad():
        return fn(q, k, v)


def markdown(report):
    lines = [f"# quest on {report['device_name']} ({report['date']})", "",
             f"torch {report['torch']}, CUDA {report['cuda']}, quest built against torch "
             f"{report['quest_torch']}; backend on the device: `{report['backend']}`.", "",
             "## Correctness against the float64 composite (relative error, max over out and grads)", "",
             "| kind | dtype | causal | GQA | padded | backend | max rel. error | bound | ok |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["correctness"]:
        lines.append(f"| {r['kind']} | {r['dtype']} | {r['causal']} | {r['gqa']} | {r['padded']} | "
                     f"{r['backend']} | {max(r['errors'].values()):.2e} | {r['bound']:.0e} | "
                     f"{'yes' if r['ok'] else '**NO**'} |")
    lines += ["", "## Beside it", ""]
    for name in ("diagnostics", "module", "finite", "compile"):
        lines.append(f"- {name}: `{json.dumps(report[name])}`")
    lines += ["", "## Speed (median ms; quest_vs_X = time of X / time of quest, >1: quest faster)", "",
              "| shape | dtype | mode | quest ms | quest, check_finite=False, ms | by hand ms | "
              "standard ms | quest GFLOP/s | quest vs by hand | quest vs standard |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["speed"]:
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['mode']} | {r['quest_ms']:.3f} | "
                     f"{r['quest_unchecked_ms']:.3f} | "
                     f"{r['by_hand_ms']:.3f} | {r['standard_ms']:.3f} | {r['quest_gflops']:.0f} | "
                     f"{r['quest_vs_by_hand']:.2f} | {r['quest_vs_standard']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True, help="directory for gpu-check.json and gpu-check.md")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="small speed shapes (a test of the script)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device")
    # On the CPU auto would pick the fused kernel: force the device path there.
    backend = "auto" if device.type != "cpu" else "sdpa"
    started = time.perf_counter()
    report = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "cuda": torch.version.cuda, "quest_torch": quest.runtime()["torch"],
              "device": str(device), "backend": backend, "host": platform.node(),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}
    report["correctness"] = correctness(device, backend)
    bad = [r for r in report["correctness"] if not r["ok"]]
    print(f"correctness: {len(report['correctness']) - len(bad)}/{len(report['correctness'])} ok "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    for r in bad:
        print("FAILED", json.dumps(r), flush=True)
    report["diagnostics"] = diagnostics_check(device, backend)
    report["module"] = module_check(device)
    report["finite"] = finite_check(device)
    report["compile"] = compile_check(device, backend)
    for name in ("diagnostics", "module", "finite", "compile"):
        print(name, json.dumps(report[name]), flush=True)
    shapes = [(2, 4, 64, 32), (1, 2, 256, 64)] if args.quick else SHAPES
    report["speed"] = speed(device, shapes, args.rounds, args.reps)
    if device.type == "cuda":
        report["profile"] = profile(device, shapes[-1], args.out)
    report["seconds"] = time.perf_counter() - started
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu-check.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "gpu-check.md"), "w") as f:
        f.write(markdown(report))
    failed = bad or not all(report[n]["ok"] if n != "diagnostics" else
                            all(x["ok"] for x in report[n].values())
                            for n in ("diagnostics", "module", "finite", "compile"))
    print(f"done in {report['seconds']:.0f} s: {'FAILED' if failed else 'all checks passed'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
