#!/usr/bin/env python3
# Markdown table of results/fused-kernel/measure.sh output: medians per (shape, mode, build) and
# the median of per-round new/old ratios (rounds are interleaved, so a ratio compares like with like).
# usage: results/fused-kernel/summarize.py runs.csv
import csv, statistics as st, sys
rows=list(csv.DictReader(open(sys.argv[1])))
shapes=[]
for r in rows:
    if r['shape'] not in shapes: shapes.append(r['shape'])
print("| B, H, N, D | mode | old GFLOP/s (median) | new GFLOP/s (median) | median per-round new/old (range) |")
print("|---|---|---|---|---|")
for s in shapes:
    for m in ['forward','backward']:
        old={r['round']:float(r['gflops']) for r in rows if r['shape']==s and r['mode']==m and r['build']=='old'}
        new={r['round']:float(r['gflops']) for r in rows if r['shape']==s and r['mode']==m and r['build']=='new'}
        ratios=[new[k]/old[k] for k in old]
        print(f"| {s.replace(',',', ')} | {'fwd' if m=='forward' else 'fwd+bwd'} | {st.median(old.values()):.1f} | {st.median(new.values()):.1f} | {st.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
