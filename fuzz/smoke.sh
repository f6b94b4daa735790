#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on the
# stable toolchain (the flags `cargo fuzz build --sanitizer none` passes;
# no nightly, no cargo-fuzz needed) and runs each for SECS seconds (default
# 10) from the seed inputs in fuzz/seeds/ (written by `cargo run --bin
# seeds`, checked in: the fleet's keys and clock are fixed, so they are
# too). Exits non-zero on a crash; the input that crashed is left in
# fuzz/artifacts/<target>/.
#   fuzz/smoke.sh [SECS]                      decoders and verifiers
#   FUZZ_FEATURES=node fuzz/smoke.sh [SECS]   and the bundle reader (builds libp2p)
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-10}
features=${FUZZ_FEATURES:-}
targets=(decode verify_manifest verify_policy verify_trust)
[ -n "$features" ] && targets+=(bundle)
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  -Cdebug-assertions -Coverflow-checks"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --locked --release --quiet --target "$host" --target-dir target/smoke \
  ${features:+--features "$features"} "${bins[@]}"
out=target/smoke/$host/release
for t in "${targets[@]}"; do
  mkdir -p "artifacts/$t" "corpus/$t"
  log=$(mktemp)
  if ! "$out/$t" -max_total_time="$secs" -artifact_prefix="artifacts/$t/" \
      -print_final_stats=1 "corpus/$t" "seeds/$t" >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz target $t crashed; the input is in fuzz/artifacts/$t/" >&2
    rm -f "$log"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
  echo "fuzz $t: $runs executions in ${secs}s, no crash"
  rm -f "$log"
done
