#!/bin/sh
# Two hosts on one machine: two network namespaces joined by a veth pair, each with its own
# address (only those and loopback are used), `quest train --nnodes 2` run in each with Gloo bound to
# its veth end (--dist-interface).
#   two_hosts.sh MODE QUEST PYTHON CONFIG WORKDIR [extra train flags...]
# MODE same:        the run gives the one-process run's losses and test scores.
#      link-cut:    the link goes down after the first epoch's checkpoint: both hosts fail within the
#                   timeout naming the rank they lost; the checkpoint resumes in one process to the
#                   one-process result.
#      never-joins: host 1 never starts: host 0 fails within the timeout with a rendezvous error.
# Exit 77 (CTest: skipped) where network namespaces cannot be made (not root, no CAP_NET_ADMIN).
set -eu
mode=$1 quest=$2 py=$3 config=$4 work=$5
shift 5
. "$(dirname "$0")/veth_hosts.sh"
veth_hosts_probe $$ || exit 77
veth_hosts $$

rm -rf "$work"
mkdir -p "$work"
port=$((20000 + tag % 20000))
timeout=15
host() {  # host RANK FLAGS...: this node's rank of the two-host run, in the background
  r=$1; shift
  eval ns=\$ns$r iface=\$if$r
  ip netns exec "$ns" "$quest" train --config "$config" "$@" --run-dir "$work/two" --nnodes 2 --node-rank "$r" \
    --nproc-per-node 1 --master-addr "$addr0" --master-port "$port" --dist-interface "$iface" \
    --dist-timeout "$timeout" > "$work/host$r.log" 2>&1 &
  pids="$pids $!"
}
compare() {  # compare DIR_A DIR_B: the same step losses and test scores
  "$py" - "$1" "$2" <<'PY'
import json, math, sys
def steps(d):
    return {j["step"]: j["loss"] for j in map(json.loads, open(d + "/metrics.jsonl")) if j["type"] == "step"}
def result(d):
    return json.load(open(d + "/result.json"))
one, two = steps(sys.argv[1]), steps(sys.argv[2])
assert one.keys() == two.keys() and one, (sorted(one), sorted(two))
worst = max(abs(one[s] - two[s]) / abs(one[s]) for s in one)
r1, r2 = result(sys.argv[1]), result(sys.argv[2])
print(f"{len(one)} logged steps, largest relative loss difference {worst:.2e}; test accuracy "
      f"{r1['test_accuracy']} / {r2['test_accuracy']}, test loss {r1['test_loss']:.6f} / {r2['test_loss']:.6f}")
assert worst < 1e-5, worst
assert abs(r1["test_accuracy"] - r2["test_accuracy"]) < 1e-9 and math.isclose(r1["test_loss"], r2["test_loss"], rel_tol=1e-5)
PY
}

case "$mode" in
same)
  "$quest" train --config "$config" "$@" --run-dir "$work/one" > "$work/one.log" 2>&1
  host 0 "$@"; pid0=$!
  host 1 "$@"; pid1=$!
  status=0
  wait "$pid0" || status=$?
  wait "$pid1" || status=$?
  if [ "$status" != 0 ]; then echo "two-host run failed ($status)"; tail -5 "$work/host0.log" "$work/host1.log"; exit 1; fi
  compare "$work/one" "$work/two"
  grep -h "data-parallel: 2 ranks" "$work/host0.log"
  echo "two hosts = one process"
  ;;
link-cut)
  "$quest" train --config "$config" "$@" --run-dir "$work/one" > "$work/one.log" 2>&1
  host 0 "$@"; pid0=$!
  host 1 "$@"; pid1=$!
  i=0  # until the first epoch's line (its checkpoint is written before it)
  until grep -q '"type": *"epoch"' "$work/two/metrics.jsonl" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 600 ] || { echo "no epoch finished"; exit 1; }; sleep 0.1
  done
  ip -n "$ns1" link set "$if1" down
  cut=$(date +%s)
  s0=0 s1=0
  wait "$pid0" || s0=$?
  wait "$pid1" || s1=$?
  took=$(( $(date +%s) - cut ))
  echo "link cut: host exit codes $s0 / $s1 after ${took} s (timeout ${timeout} s)"
  [ "$s0" != 0 ] && [ "$s1" != 0 ] || { echo "a host did not fail"; exit 1; }
  [ "$took" -le $((3 * timeout + 10)) ] || { echo "the hosts took ${took} s to fail"; exit 1; }
  grep -h "rank(s) 1 did not answer\|lost.*rank 1\|rank 1" "$work/host0.log" | head -2
  grep -q "rank(s) 1 did not answer\|rank 1" "$work/host0.log" || { echo "host 0 does not name rank 1"; tail -3 "$work/host0.log"; exit 1; }
  grep -q "rank(s) 0 did not answer\|rank 0\|rendezvous" "$work/host1.log" || { echo "host 1 does not name rank 0"; tail -3 "$work/host1.log"; exit 1; }
  # The checkpoint of the first epoch is intact: one process resumes it to the one-process result.
  "$quest" train --config "$config" "$@" --run-dir "$work/two" --resume > "$work/resume.log" 2>&1
  compare "$work/one" "$work/two"
  echo "link cut: both hosts failed, the checkpoint resumed to the one-process result"
  ;;
never-joins)
  start=$(date +%s)
  s0=0
  host 0 "$@"; wait $! || s0=$?
  took=$(( $(date +%s) - start ))
  echo "host 0 alone: exit code $s0 after ${took} s (timeout ${timeout} s)"
  [ "$s0" != 0 ] && [ "$took" -le $((3 * timeout + 10)) ] || exit 1
  grep -h "rendezvous" "$work/host0.log" | head -2
  grep -q "rendezvous" "$work/host0.log" || exit 1
  ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
