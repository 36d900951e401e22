#!/bin/sh
# Data parallel across two hosts on this machine (network namespaces joined by a veth pair,
# tests/distributed/veth_hosts.sh): (1) Gloo all-reduce time against message size over the veth
# link and over loopback (bench/python/bench_allreduce.py: the per-byte cost for the projection);
# (2) the full config's training throughput as 1 process x 2 threads, and as 2 hosts x 1 rank x 1
# thread with the gradient all-reduce overlapped with the backward (1 MB buckets) and without,
# interleaved for $ROUNDS rounds. Writes allreduce-veth.json, allreduce-loopback.json and appends to
# two-hosts.csv here. Needs root (ip netns). Stop other work on the machine first.
# Environment: ROUNDS (3), SUBSET (18000 images), BUCKET_MB (0.125), LAYOUTS (all three),
# ALLREDUCE (1: measure the all-reduce first; 0: skip it).
# Usage: results/scaling/two-hosts.sh [quest binary] [python with torch]
set -eu
QUEST=$(realpath "${1:-build/quest}")
PY=$(realpath -s "${2:-.venv/bin/python}")  # -s: a venv's python is a symlink
ROUNDS=${ROUNDS:-3}
SUBSET=${SUBSET:-18000}
BUCKET_MB=${BUCKET_MB:-0.125}  # the overlapped layout's buckets (the full config's 644 KB of gradients: 5)
LAYOUTS=${LAYOUTS:-1x2 2hosts-overlap 2hosts-no-overlap}
ALLREDUCE=${ALLREDUCE:-1}
OUT=$(dirname "$0")
WORK=${WORK:-/tmp/quest-two-hosts}
. tests/distributed/veth_hosts.sh
veth_hosts_probe $$ || exit 1
veth_hosts $$
mkdir -p "$WORK"

# (1) all-reduce against size, veth then loopback.
[ "$ALLREDUCE" = 1 ] && for link in veth loopback; do
  if [ $link = veth ]; then
    a0="ip netns exec $ns0 env GLOO_SOCKET_IFNAME=$if0" a1="ip netns exec $ns1 env GLOO_SOCKET_IFNAME=$if1" m=$addr0
  else
    a0="env GLOO_SOCKET_IFNAME=lo" a1="env GLOO_SOCKET_IFNAME=lo" m=127.0.0.1
  fi
  $a1 "$PY" bench/python/bench_allreduce.py --rank 1 --master $m:29611 & pids="$pids $!"
  echo "all-reduce over $link:"
  $a0 "$PY" bench/python/bench_allreduce.py --rank 0 --master $m:29611 --out "$OUT/allreduce-$link.json"
  wait
done

# (2) the full config, one pass over $SUBSET images, the layouts interleaved.
csv=$OUT/two-hosts.csv
[ -f "$csv" ] || echo "layout,bucket_mb,round,images_per_second,steps,allreduce_bytes_per_step,allreduce_wait_seconds_per_step,epoch_seconds" > "$csv"
port=29620
for round in $(seq 1 "$ROUNDS"); do
  for layout in $LAYOUTS; do
    dir=$WORK/$layout-$round
    rm -rf "$dir"
    flags="--config configs/full.json --train-subset $SUBSET --epochs 1 --no-test --run-dir $dir"
    if [ $layout = 1x2 ]; then
      OMP_NUM_THREADS=2 "$QUEST" train $flags > /dev/null
    else
      extra="--dist-bucket-mb $BUCKET_MB"; [ $layout = 2hosts-no-overlap ] && extra=--dist-no-overlap
      port=$((port + 1))
      for r in 1 0; do
        eval ns=\$ns$r iface=\$if$r
        OMP_NUM_THREADS=1 ip netns exec "$ns" "$QUEST" train $flags --nnodes 2 --node-rank $r --nproc-per-node 1 \
          --master-addr "$addr0" --master-port $port --dist-interface "$iface" $extra > "$WORK/$layout-$round-host$r.log" 2>&1 &
        pids="$pids $!"
      done
      wait
    fi
    bucket=$BUCKET_MB; [ $layout = 2hosts-overlap ] || bucket=""
    "$PY" - "$dir/metrics.jsonl" "$layout,$bucket" "$round" >> "$csv" <<'PYEOF'
import json, sys
path, layout, rnd = sys.argv[1:]
epoch = [j for j in map(json.loads, open(path)) if j["type"] == "epoch"][-1]
steps = epoch["step"]
print(f"{layout},{rnd},{epoch['images_per_second']:.1f},{steps},{epoch.get('allreduce_bytes_per_step', 0)},"
      f"{epoch.get('allreduce_seconds', 0) / steps:.5f},{epoch['epoch_seconds']:.2f}")
PYEOF
    tail -1 "$csv"
  done
done
