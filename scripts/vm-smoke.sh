#!/bin/sh
# Smoke test of netfault inside the test VM (`cargo xtask vm-test` runs it on every pinned
# kernel): the fq qdisc, the binary, and one real impairment between two network namespaces
# joined by a veth pair. Prints PASS/FAIL per check and exits non-zero if any check failed.
# Only documentation addresses (192.0.2.0/24), only inside the VM.
set -u

failures=0
pass() { echo "vm-smoke: PASS $*"; }
fail() { echo "vm-smoke: FAIL $*"; failures=$((failures + 1)); }

# check DESCRIPTION CMD...: runs CMD, showing its output, and records the result.
check() {
    desc=$1
    shift
    if "$@"; then pass "$desc"; else fail "$desc (exit $?: $*)"; fi
}

# check_fails DESCRIPTION CMD...: the same, for a command that must fail.
check_fails() {
    desc=$1
    shift
    if "$@"; then fail "$desc (succeeded: $*)"; else pass "$desc"; fi
}

# netfault itself runs with an empty PATH: it needs no tc or ip (netlink only); the script
# keeps using them to set up and to check.
NETFAULT=$(command -v netfault)
nf() { env PATH=/nonexistent "$NETFAULT" "$@"; }

ping_b() { ip netns exec A ping -n -q -c 2 -i 0.2 -W 1 192.0.2.2; }

echo "vm-smoke: kernel $(uname -r)"

check "fq qdisc on lo" tc qdisc add dev lo root fq
tc qdisc del dev lo root 2>/dev/null
check "netfault --version" nf --version

ip netns add A && ip netns add B &&
    ip link add va netns A type veth peer name vb netns B &&
    ip -n A addr add 192.0.2.1/24 dev va && ip -n B addr add 192.0.2.2/24 dev vb &&
    ip -n A link set va up && ip -n B link set vb up &&
    ip -n A link set lo up && ip -n B link set lo up
check "two namespaces joined by veth" test $? = 0

check "ping A -> B before netfault" ping_b
check_fails "no clsact qdisc on vb before attach" sh -c 'ip netns exec B tc qdisc show dev vb | grep -q clsact'
check "netfault attach vb in B (no tc, no ip on its PATH)" nf --netns B attach vb
nf --netns B status
check "netfault rule add (icmp, drop 100%)" nf --netns B rule add r --proto icmp --drop 100%
check_fails "ping A -> B dropped" ping_b
nf --netns B stats
check "netfault rule add (egress delay 10ms: fq by netlink)" nf --netns B rule add d --dir egress --proto udp --delay 10ms
check "fq 4e46: installed on vb" sh -c 'ip netns exec B tc qdisc show dev vb root | grep -q "fq 4e46:"'
# stats --watch reads fq's counters over netlink from inside its tick loop (grep reads to the
# end: -q would close the pipe under it).
check "stats --watch shows netfault's fq" sh -c 'timeout 3 env PATH=/nonexistent "$0" --netns B stats --watch 1s | grep "^queue vb (fq" >/dev/null' "$NETFAULT"
check "netfault detach in B" nf --netns B detach
check "ping A -> B after detach" ping_b
check_fails "no fq of netfault's left on vb after detach" sh -c 'ip netns exec B tc qdisc show dev vb root | grep -q "fq 4e46:"'

# Nothing of netfault's may remain on the interface once detached.
# Before 6.6 that includes the clsact qdisc netfault created (from 6.6 it uses tcx, no qdisc).
leftover=$(ip netns exec B tc filter show dev vb ingress 2>&1; ip netns exec B tc filter show dev vb egress 2>&1)
if echo "$leftover" | grep -q bpf; then
    fail "no tc filter left on vb after detach: $leftover"
else
    pass "no tc filter left on vb after detach"
fi
if ip netns exec B tc qdisc show dev vb | grep -q clsact; then
    fail "no clsact qdisc left on vb after detach (netfault added it at attach)"
else
    pass "no clsact qdisc left on vb after detach"
fi

if [ "$failures" -eq 0 ]; then
    echo "vm-smoke: all checks passed on $(uname -r)"
else
    echo "vm-smoke: $failures check(s) failed on $(uname -r)"
fi
[ "$failures" -eq 0 ]
