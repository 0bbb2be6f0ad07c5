#!/usr/bin/env bash
# Resident memory of the gateway on the bench workload: VmHWM/VmRSS right after start-up (the
# 1,000 bench tenants loaded) and after 5 s of `wrk -c50` with the bench's wrk script.
# Needs: a release build (or BIN=...), wrk, and one earlier run of ../shared/bench/run.sh (for
# the bench upstream, the generated tenants and the rendered gateway.toml).
#   bash scripts/peak-rss.sh [BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/tenantgate}
B=${BENCH_WORK:-/tmp/tenantgate-bench}
BENCH=${BENCH_DIR:-../shared/bench}
UPSTREAM="$B/upstream-target/release/bench-upstream"
[ -x "$UPSTREAM" ] && [ -f "$B/out/run/gateway.toml" ] || { echo "run $BENCH/run.sh once first" >&2; exit 1; }
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
"$UPSTREAM" --listen 127.0.0.1:18080 --threads 1 >/dev/null 2>&1 &
TOKIO_WORKER_THREADS=1 "$BIN" run --config "$B/out/run/gateway.toml" >/dev/null 2>&1 & gw=$!
for _ in $(seq 150); do curl -s -o /dev/null http://127.0.0.1:18084/ && break; sleep 0.1; done
mem() { grep -E 'VmHWM|VmRSS' "/proc/$gw/status" | awk '{ printf "%s %s KiB  ", $1, $2 }'; echo; }
echo -n "started:    "; mem
wrk -t1 -c50 -d5s -s "$BENCH/lib/wrk_tenants.lua" http://127.0.0.1:18084/api/messages -- "$B/out/data/wrk_tenants.lua" >/dev/null
echo -n "after load: "; mem
