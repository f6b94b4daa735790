#!/usr/bin/env bash
# The testnet's benchmark sweep, the one CI leaves out (about 8 minutes on
# two cores): the simulator at 1,000 and 10,000 nodes, 50 nodes on loopback,
# and, as root, the network-namespace scenarios 3 sites x 4 nodes, its
# transport floor (one node alone on the same links) and 6 sites x 5 nodes on
# unequal links. Prints every figure next to its target and
# writes each run's JSON report and a summary to OUT_DIR. See
# docs/benchmarks.md.
#
# Usage: bench/testnet.sh [OUT_DIR]          (default: bench/out)
#   WORK=DIR   lab directories go here (default: under /dev/shm: on ext4
#              without a journal, as on the project's VM, creating files
#              soon after deleting many is slow; docs/benchmarks.md#demo)
#   ONLY=LIST  a comma-separated subset of sim1k,sim10k,loopback50,netns34,
#              netns11,netns65
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-bench/out}")
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=${WORK:-$base/fleetmesh-bench.$$}
known=sim1k,sim10k,loopback50,netns34,netns11,netns65
only=",${ONLY:-$known},"
for name in $(echo "${ONLY:-}" | tr , " "); do
  if [[ ",$known," != *",$name,"* ]]; then
    echo "bench/testnet.sh: ONLY: unknown run \"$name\" (known: $known)" >&2
    exit 2
  fi
done
case "$only" in *,netns*)
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench/testnet.sh: the netns runs need root; run as root or set ONLY=sim1k,sim10k,loopback50" >&2
    exit 2
  fi
esac
if [ -e "$work" ] && [ -n "$(ls -A "$work")" ]; then
  echo "bench/testnet.sh: WORK=$work is not empty" >&2
  exit 2
fi
cargo build --release --workspace --quiet
bin=$PWD/target/release/fleetmesh-testnet
mkdir -p "$out" "$work"
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
want() { [[ "$only" == *",$1,"* ]]; }
step() { echo "== $1 ($(date +%H:%M:%S))" >&2; }

if want sim1k; then
  step "simulator, 1,000 nodes in 10 sites"
  "$bin" sim --nodes 1000 --sites 10 --seed 7 > "$out/sim1k.json"
fi
if want sim10k; then
  step "simulator, 10,000 nodes in 100 sites"
  "$bin" sim --nodes 10000 --sites 100 --seed 7 > "$out/sim10k.json"
fi
if want loopback50; then
  step "loopback, 50 nodes in 5 sites, 64 MiB"
  "$bin" mesh-bench --nodes 50 --sites 5 --size 64MiB --work "$work/loopback50" > "$out/loopback50.json"
fi
for s in 34:netns-3x4 11:netns-1x1-floor 65:netns-6x5-unequal; do
  if want "netns${s%%:*}"; then
    step "network namespaces, ${s#*:}"
    "$bin" run --netns --scenario "testnet/scenarios/${s#*:}.toml" \
      --work "$work/netns${s%%:*}" --json "$out/netns${s%%:*}.json" > /dev/null
  fi
done

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
rows = []
def row(what, figure, target=""):
    rows.append((what, figure, target))
for name, label in (("sim1k", "simulator 1,000 nodes"), ("sim10k", "simulator 10,000 nodes")):
    r = load(name)
    if r:
        row(f"{label}: completion / T_min", f"{r['completion_secs']:.1f} s / {r['t_min_secs']:.1f} s = {r['ratio']:.2f}")
        row(f"{label}: seed egress, WAN in per site max / mean", f"{r['seed_egress']:.2f}x, {r['wan_max']:.2f}x / {r['wan_mean']:.2f}x")
        row(f"{label}: manifest loaded by; seed sent it; a site pulled it (max)", f"{r['manifest_secs']:.2f} s; {r['seed_manifest']:.2f}x; {r['wan_manifest_max']:.2f}x")
        row(f"{label}: wall time", f"{r['wall_secs']:.1f} s", "< 60 s" if r["nodes"] >= 10000 else "")
r = load("loopback50")
if r:
    row("loopback 50 nodes: announcement to all", f"{r['announce_secs']:.2f} s", "< 2 s")
    row("loopback 50 nodes: completion", f"{r['completion_secs']:.1f} s")
    row("loopback 50 nodes: node peak RSS mean / max", f"{r['node_rss_mib_mean']:.1f} / {r['node_rss_mib_max']:.1f} MiB")
    row("loopback 50 nodes: seed egress, images verified", f"{r['seed_egress_ratio']:.3f}x, {r['images_verified']}/{r['nodes']}")
    row("loopback 50 nodes: \"WAN\" into each site, chunk bytes", ", ".join(f"{s['wan_ratio']:.3f}" for s in r["sites"]))
floor = load("netns11")
if floor:
    fl = floor["links"]["site_wan"][0]["in_ratio"]
    row("netns floor, 1 node alone: completion / T_min", f"{floor['completion_secs']:.2f} s / {floor['t_min_secs']:.1f} s = {floor['completion_over_t_min']:.3f}")
    row("netns floor, 1 node alone: WAN in, chunk / link bytes", f"{floor['site_wan_ratio'][0][1]:.3f} / {fl:.3f}")
for name in ("netns34", "netns65"):
    r = load(name)
    if not r:
        continue
    tag = "3x4" if name == "netns34" else "6x5 unequal"
    links = r["links"]
    row(f"netns {tag}: completion / T_min", f"{r['completion_secs']:.2f} s / {r['t_min_secs']:.1f} s = {r['completion_over_t_min']:.3f}", "<= 1.15" if name == "netns34" else "")
    row(f"netns {tag}: seed egress, chunk / link bytes", f"{r['seed_egress_ratio']:.3f} / {links['seed_tx_ratio']:.3f}", "<= 1.10" if name == "netns34" else "")
    chunk = ", ".join(f"{s} {v:.3f}" for s, v in r["site_wan_ratio"])
    link = ", ".join(f"{s['site']} {s['in_ratio']:.3f}" for s in links["site_wan"])
    row(f"netns {tag}: WAN into each site, chunk bytes", chunk, "<= 1.05" if name == "netns34" else "")
    row(f"netns {tag}: WAN into each site, link bytes", link, "<= 1.05" if name == "netns34" else "")
    # The ratios above divide by the release as stored (zstd); the image
    # itself is larger.
    scale = r["wire_bytes"] / r["image_bytes"]
    row(f"netns {tag}: WAN into each site, link bytes / image", ", ".join(f"{s['site']} {s['in_ratio'] * scale:.3f}" for s in links["site_wan"]))
    if name == "netns34" and floor:
        row("netns 3x4 over the floor: completion, WAN link bytes", f"{r['completion_secs'] / floor['completion_secs']:.3f}, " + ", ".join(f"{s['site']} {s['in_ratio'] / fl:.3f}" for s in links["site_wan"]))
    row(f"netns {tag}: images verified", f"{r['images_verified']}/{r['honest_running']}")
w = max(len(a) for a, _, _ in rows)
lines = [f"{a:<{w}}  {b}" + (f"   (target {c})" if c else "") for a, b, c in rows]
print("\n".join(lines))
open(os.path.join(out, "testnet-summary.txt"), "w").write("\n".join(lines) + "\n")
PY
