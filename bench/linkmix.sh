#!/usr/bin/env bash
# What the first site's WAN link carries in a netns run, packet by packet:
# runs one scenario while tcpdump records the headers of every frame on
# that link (at the core router), then splits the bytes into the site
# against the release: chunk bytes, the Ethernet/IP/UDP headers of the
# frames that carry them, the rest of those frames (QUIC headers and
# tags, stream framing, the manifest, hellos, have-maps), and frames of
# 200 bytes or less (acknowledgements and control). The same for the bytes
# out of the site. Shows where the link bytes above the release go; the
# interface counters the lab reports give only the total. About 2.5 minutes;
# root only; not part of CI. See docs/benchmarks.md.
#
# Usage: bench/linkmix.sh [SCENARIO] [OUT_DIR]
#   SCENARIO  default testnet/scenarios/netns-3x4.toml
#   OUT_DIR   default bench/out/linkmix: run.json, site0.pcap, linkmix.txt
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-testnet/scenarios/netns-3x4.toml}
out=$(realpath -m "${2:-bench/out/linkmix}")
[ -f "$scenario" ] || { echo "bench/linkmix.sh: no scenario file $scenario" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "bench/linkmix.sh: needs root (network namespaces)" >&2; exit 2; }
command -v tcpdump > /dev/null || { echo "bench/linkmix.sh: needs tcpdump (apt-get install tcpdump)" >&2; exit 2; }
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=$base/fleetmesh-linkmix.$$
mkdir -p "$out"
cargo build --release --workspace --quiet
run=
td=
cleanup() {
  [ -z "$td" ] || kill "$td" 2> /dev/null || true
  [ -z "$run" ] || kill "$run" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
./target/release/fleetmesh-testnet run --netns --scenario "$scenario" \
  --work "$work" --json "$out/run.json" > "$out/run.log" 2>&1 &
run=$!
# The lab names its namespaces after its process id.
ns=fmlab$run-core
for _ in $(seq 600); do
  ip netns exec "$ns" ip link show s0 > /dev/null 2>&1 && break
  kill -0 "$run" 2> /dev/null || break
  sleep 0.1
done
ip netns exec "$ns" ip link show s0 > /dev/null 2>&1 || {
  echo "bench/linkmix.sh: the lab's core router never came up; see $out/run.log" >&2
  exit 1
}
ip netns exec "$ns" tcpdump -Z root -i s0 -s 64 -w "$out/site0.pcap" 2> "$out/tcpdump.log" &
td=$!
status=0
wait "$run" || status=$?
run=
# The lab deleted the namespace on its way out; tcpdump may have gone too.
kill -INT "$td" 2> /dev/null || true
wait "$td" 2> /dev/null || true
td=
if [ "$status" -ne 0 ]; then
  echo "bench/linkmix.sh: the run failed (exit $status); see $out/run.log" >&2
  exit 1
fi
python3 bench/linkmix.py "$out/run.json" "$out/site0.pcap" | tee "$out/linkmix.txt"
grep -h "dropped by kernel" "$out/tcpdump.log" || true
