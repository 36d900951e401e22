#!/usr/bin/env python3
"""The repeated points beside the sweep's own records: final validation loss, max |logit| and min
entropy per kind, for the sweep's run (its build and SIMD target), this build on the machine's best
target (native) and restricted to AVX2. Usage: compare.py vit|lm"""
import json
import sys

task = sys.argv[1] if len(sys.argv) > 1 else "vit"
here = "results/lr-sweep-scale"


def records(path, want):
    out = {}
    try:
        for line in open(path):
            r = json.loads(line)
            if all(r.get(k) == v for k, v in want.items()):
                out[r["kind"]] = r  # the last line per kind
    except FileNotFoundError:
        pass
    return out


point = {"size": "s2", "lr": 0.1, "seed": 0}
sweep = records(f"{here}/{task}/record.jsonl", point)
native = records(f"{here}/repeat/native-{task}.jsonl", point)
avx2 = records(f"{here}/repeat/AVX2-{task}.jsonl", point)
print(f"{task}, s2, lr 0.1, seed 0")
print("| kind | run | SIMD target | final val loss | max \\|logit\\| | min entropy | config |")
print("|---|---|---|---|---|---|---|")
for kind in ["standard", "quest", "qnorm", "qknorm", "qk_layernorm"]:
    for name, rs in (("sweep", sweep), ("this build, native", native), ("this build, AVX2", avx2)):
        r = rs.get(kind)
        if r:
            print(f"| {kind} | {name} | {r['simd_target']} | {r['final_val_loss']:.4f} | "
                  f"{r['logit_abs_max']:.0f} | {r['entropy_min']:.3f} | {r['config']} |")
