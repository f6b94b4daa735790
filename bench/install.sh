#!/usr/bin/env bash
# Install benchmark: fleetmesh-node writing a published image into its
# inactive slot (stream from the chunk store, fsync, read back, hash), next
# to `cp` + `sync` of the same image to the same disk, and the node's peak
# RSS. See docs/benchmarks.md.
#
# Usage: bench/install.sh [SIZE] [OUT_DIR]     (defaults: 1GiB bench/out)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1GiB}
out=${2:-bench/out}
cargo build --release --workspace --quiet
bin=$PWD/target/release
mkdir -p "$out"
work="$out/install.$$"
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
mkdir -p "$work"

"$bin/fleetmesh-testnet" gen-image --size "$size" --seed 1 --out "$work/v1.img" > /dev/null
"$bin/fleetmesh-testnet" gen-image --size "$size" --seed 2 --out "$work/v2.img" > /dev/null
"$bin/fleetmesh-seed" init --dir "$work/seed" > /dev/null 2>&1
"$bin/fleetmesh-seed" publish --dir "$work/seed" --image "$work/v1.img" --version 1.0.0 > /dev/null
"$bin/fleetmesh-seed" publish --dir "$work/seed" --image "$work/v2.img" --version 2.0.0 > /dev/null
node="$work/node"
mkdir -p "$node"
cp -r "$work/seed/store" "$node/store"
cp "$work/seed/root.pub" "$work/seed/trust.chain" "$node/"
cp "$work/v1.img" "$node/slot-a"
printf 'platform = "generic"\n[slots]\nbackend = "file"\nslot_a = "slot-a"\nslot_b = "slot-b"\n' > "$node/node.toml"
sync

secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }
s=$(date +%s.%N); cp "$work/v2.img" "$work/copy.img"; sync; cp_s=$(secs "$s" "$(date +%s.%N)")
rm -f "$work/copy.img"; sync

FLEETMESH_LOG=fleetmesh_node=info /usr/bin/time -f '%M' -o "$work/rss" \
    "$bin/fleetmesh-node" run --once --dir "$node" 2> "$work/log" || [ $? -eq 75 ]
install_s=$(sed -n 's/.*install finished.*secs=\([0-9.]*\).*/\1/p' "$work/log" | head -1)
rss_kib=$(tail -1 "$work/rss")
python3 - "$size" "$cp_s" "$install_s" "$rss_kib" "$out" <<'PY'
import json, sys
size, cp_s, install_s, rss_kib, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r = {"size": size, "cp_sync_s": cp_s, "install_s": install_s, "install_vs_cp": round(install_s / cp_s, 3), "peak_rss_mib": round(rss_kib / 1024, 1)}
json.dump(r, open(f"{out}/install.json", "w"), indent=2)
print(f"cp + sync        {cp_s:.3f} s")
print(f"install          {install_s:.3f} s  ({r['install_vs_cp']:.2f}x cp+sync; install also reads the slot back and hashes it)")
print(f"peak RSS         {r['peak_rss_mib']} MiB  (target <= 64 MiB; whole run: boot, identify running slot, install)")
PY
