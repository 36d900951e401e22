#!/bin/bash
# One ViT training epoch (configs/full.json's model, 2 threads, 8 000 images) under each allocator,
# interleaved over rounds: images/s (the epoch line of metrics.jsonl), minor page faults and
# user/system seconds (/usr/bin/time). The composite attention backend too, since it allocates
# the most. Usage: results/allocator/measure.sh <quest binary> <rounds> [allocators...] > allocator.csv
# (allocators: glibc glibc-tuned glibc-kept jemalloc tcmalloc; default all but glibc-kept.
# glibc-tuned's mmap_threshold is over glibc's 32 MB limit and ignored; glibc-kept is what
# keep_freed_memory() sets: no mmap at all, no trimming)
set -eu
quest=${1:-build/quest}; rounds=${2:-3}; shift 2 || true
allocators=${*:-glibc glibc-tuned jemalloc tcmalloc}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
lib=/usr/lib/x86_64-linux-gnu
declare -A env=(
  [glibc]=""
  [glibc-tuned]="GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456"
  [glibc-kept]="GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"
  [jemalloc]="LD_PRELOAD=$lib/libjemalloc.so.2"
  [tcmalloc]="LD_PRELOAD=$lib/libtcmalloc_minimal.so.4"
)
tmp=$(mktemp -d)
echo "round,allocator,backend,images_per_second,minor_faults,user_s,system_s"
for r in $(seq "$rounds"); do
  for a in $allocators; do
    for backend in fused composite; do
      rm -rf "$tmp/run"
      env ${env[$a]} /usr/bin/time -f "%R %U %S" -o "$tmp/time" "$quest" train --config configs/full.json \
        --epochs 1 --train-subset 8000 --warmup-epochs 0 --backend "$backend" --no-test --run-dir "$tmp/run" > /dev/null 2>&1
      ips=$(grep '"type":"epoch"' "$tmp/run/metrics.jsonl" | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["images_per_second"])')
      read -r faults user sys < "$tmp/time"
      echo "$r,$a,$backend,$ips,$faults,$user,$sys"
    done
  done
done
rm -rf "$tmp"
