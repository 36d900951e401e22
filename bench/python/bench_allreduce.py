"""Gloo all-reduce time against message size between two ranks (torch.distributed, float32 sum):
the per-message latency and per-byte cost of a link, fitted as t = alpha + beta * bytes.

Run one process per rank (each on its host; GLOO_SOCKET_IFNAME picks the interface):
    python bench/python/bench_allreduce.py --rank 0 --world 2 --master 10.0.0.1:29600 [--out f.json]
Rank 0 prints the table and writes --out.
"""
import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--master", required=True, help="host:port of rank 0")
    ap.add_argument("--sizes-kb", default="4,16,64,256,1024,4096,16384")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://{a.master}", rank=a.rank, world_size=a.world)
    rows = []
    for kb in (int(x) for x in a.sizes_kb.split(",")):
        t = torch.ones(kb * 256)  # kb KiB of float32
        for _ in range(3):
            dist.all_reduce(t)
        times = []
        for _ in range(a.reps):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - start)
        # Both ranks' medians: the slower one is the collective's time.
        med = torch.tensor([statistics.median(times)], dtype=torch.float64)
        dist.all_reduce(med, op=dist.ReduceOp.MAX)
        rows.append({"bytes": kb * 1024, "median_ms": med.item() * 1e3})
    # Least squares t = alpha + beta * bytes over the sizes.
    xs = [r["bytes"] for r in rows]
    ys = [r["median_ms"] / 1e3 for r in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    beta = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    alpha = my - beta * mx
    if a.rank == 0:
        for r in rows:
            print(f"{r['bytes'] / 1024:>8.0f} KiB  {r['median_ms']:8.3f} ms  {r['bytes'] / r['median_ms'] / 1e6:7.2f} GB/s")
        print(f"fit: {alpha * 1e6:.0f} us + {beta * 1e9:.3f} ns/byte ({1 / beta / 1e9:.2f} GB/s effective)")
        if a.out:
            with open(a.out, "w") as f:
                json.dump({"world": a.world, "torch": torch.__version__, "reps": a.reps, "rows": rows,
                           "alpha_seconds": alpha, "beta_seconds_per_byte": beta}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
