import csv,statistics as st,collections,sys
rows=list(csv.reader(open(sys.argv[1])))[1:]
d=collections.defaultdict(lambda: collections.defaultdict(list))
for r in rows:
    key=(",".join(r[0:4]),r[4],r[5]); d[key][r[7]].append(float(r[8]))
print("| B,H,N,D | kind | mode | before GFLOP/s (median of 7) | after | after/before |")
print("|---|---|---|---|---|---|")
for k,v in d.items():
    b,a=st.median(v['before']),st.median(v['after'])
    print(f"| {k[0]} | {k[1]} | {'forward' if k[2]=='forward' else 'forward+backward'} | {b:.1f} | {a:.1f} | {a/b:.2f} |")
