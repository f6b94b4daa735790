#!/usr/bin/env bash
# Publish benchmark: chunk + hash + compress + store a generated image, next to
# b3sum and `zstd -3 -T0` on the same file in the same run, and the delta ratio
# of a v2 (5% in 1 MiB regions rewritten, 300 small edits, one 64 KiB insertion).
# See docs/benchmarks.md.
#
# Usage: bench/publish.sh [SIZE] [OUT_DIR]     (defaults: 1GiB bench/out)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1GiB}
out=${2:-bench/out}

cargo build --release --workspace --quiet
command -v zstd >/dev/null || { echo "error: zstd not installed (apt-get install zstd)" >&2; exit 1; }
command -v b3sum >/dev/null || cargo install b3sum --locked --quiet
bin=target/release
mkdir -p "$out"
seed="$out/seed.$$"
trap 'rm -rf "$seed"' EXIT

echo "generating $size image and its v2 ..." >&2
"$bin/fleetmesh-testnet" gen-image --size "$size" --out "$out/v1.img" --v2 "$out/v2.img" > "$out/plan.json"
# Flush the generated images now: publish's group commit (syncfs) would
# otherwise pay for their writeback. Then the same warm page cache for every tool.
sync
cat "$out/v1.img" "$out/v2.img" > /dev/null

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }

sync
s=$(now); b3sum "$out/v1.img" > /dev/null; b3=$(secs "$s" "$(now)")
s=$(now); zstd -3 -T0 -q -c "$out/v1.img" > /dev/null; zs=$(secs "$s" "$(now)")
"$bin/fleetmesh-seed" init --dir "$seed" > /dev/null 2>&1
s=$(now); "$bin/fleetmesh-seed" publish --dir "$seed" --image "$out/v1.img" --version 1.0.0 > "$out/v1.json"; p1=$(secs "$s" "$(now)")
s=$(now); "$bin/fleetmesh-seed" publish --dir "$seed" --image "$out/v2.img" --version 1.1.0 > "$out/v2.json"; p2=$(secs "$s" "$(now)")

python3 - "$out" "$b3" "$zs" "$p1" "$p2" <<'PY'
import json, sys
out, b3, zs, p1, p2 = sys.argv[1], *map(float, sys.argv[2:])
plan = json.load(open(f"{out}/plan.json"))
v1, v2 = json.load(open(f"{out}/v1.json")), json.load(open(f"{out}/v2.json"))
changed = plan["changed_bytes"]
result = {
    "image_bytes": v1["image_bytes"],
    "b3sum_s": b3, "zstd3_T0_s": zs, "b3sum_plus_zstd_s": round(b3 + zs, 3),
    "publish_v1_s": p1, "publish_v2_s": p2,
    "publish_vs_b3sum_plus_zstd": round(p1 / (b3 + zs), 3),
    "v1_chunks": v1["chunks"], "v1_stored_bytes": v1["stored_bytes"],
    "v2_new_chunks": v2["new_chunks"], "v2_new_bytes": v2["new_bytes"], "v2_stored_bytes": v2["stored_bytes"],
    "changed_bytes": changed,
    "delta_ratio": round(v2["new_bytes"] / changed, 4),
    "delta_ratio_stored": round(v2["stored_bytes"] / changed, 4),
}
json.dump(result, open(f"{out}/publish.json", "w"), indent=2)
print(f"image                 {result['image_bytes']} bytes")
print(f"b3sum                 {b3:.3f} s")
print(f"zstd -3 -T0           {zs:.3f} s")
print(f"publish v1            {p1:.3f} s  ({result['publish_vs_b3sum_plus_zstd']:.2f}x b3sum+zstd; target <= 1.00)")
print(f"publish v2            {p2:.3f} s")
print(f"stored / image        {v1['stored_bytes'] / v1['image_bytes']:.3f}")
print(f"delta ratio           {result['delta_ratio']:.4f}  (new chunk bytes / changed bytes; target <= 1.10)")
print(f"delta ratio, stored   {result['delta_ratio_stored']:.4f}  (compressed new chunk bytes / changed bytes)")
print(f"results               {out}/publish.json")
PY
