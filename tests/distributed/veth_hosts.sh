# Sourced (sh): two "hosts" on one machine, two network namespaces joined by a veth pair, each with
# its own address; only those addresses and loopback are used.
#   veth_hosts_probe TAG || exit 77   where namespaces cannot be made (not root, no CAP_NET_ADMIN)
#   veth_hosts TAG                    sets $ns0 $ns1 (namespaces), $if0 $if1 (their veth ends),
#                                     $addr0 $addr1, and a trap that removes them (and kills the
#                                     pids listed in $pids) on exit
veth_hosts_probe() {
  if [ "$(id -u)" != 0 ] || ! ip netns add "qprobe$1" 2>/dev/null; then
    echo "SKIPPED: two hosts need root and 'ip netns' (network namespaces); this machine does not permit them"
    return 77
  fi
  ip netns del "qprobe$1"
}
veth_hosts() {
  tag=$1
  ns0="qh0-$tag" ns1="qh1-$tag" if0="qv0-$tag" if1="qv1-$tag"
  net="10.$((200 + tag % 50)).$((tag / 50 % 250)).0"
  addr0="${net%.0}.1" addr1="${net%.0}.2"
  pids=""
  trap veth_hosts_cleanup EXIT INT TERM
  ip netns add "$ns0"
  ip netns add "$ns1"
  ip link add "$if0" type veth peer name "$if1"
  ip link set "$if0" netns "$ns0"
  ip link set "$if1" netns "$ns1"
  ip -n "$ns0" addr add "$addr0/24" dev "$if0"
  ip -n "$ns1" addr add "$addr1/24" dev "$if1"
  for ns in "$ns0" "$ns1"; do ip -n "$ns" link set lo up; done
  ip -n "$ns0" link set "$if0" up
  ip -n "$ns1" link set "$if1" up
  echo "hosts: $ns0 ($addr0 on $if0), $ns1 ($addr1 on $if1)"
}
veth_hosts_cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null || true; done
  ip netns del "$ns0" 2>/dev/null || true
  ip netns del "$ns1" 2>/dev/null || true
}
