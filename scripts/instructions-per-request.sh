#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind (repeatable on a shared,
# noisy machine, unlike wall-clock figures). Runs the gateway on the bench workload twice under
# valgrind, for 2 s and 8 s of wrk load (each after the same WARMUP_SECS=3 of load that fills
# the tenant cache), and prints the slope: start-up and cache-filling costs cancel out.
# CACHE_SIM=1 also simulates the caches and branch predictor (32 KiB I1, 48 KiB D1, 2 MiB LL)
# and prints instruction-cache misses and mispredicted branches per request: the gateway's
# user time tracks those as much as the instruction count.
# NGINX=1 counts nginx instead, on the same load (its bench config, one process:
# `master_process off`), for comparison.
# Extra ENV=VALUE arguments go to the gateway, e.g. to count the MongoDB store:
#   bash scripts/instructions-per-request.sh TENANTGATE_STORE_KIND=mongodb \
#     TENANTGATE_STORE_URI='mongodb://127.0.0.1:27017/?directConnection=true'
# GATEWAY_BIN=path counts another build (default target/release/tenantgate).
# Needs: a release build, valgrind, wrk, and one earlier run of ../shared/bench/run.sh (for the
# bench upstream, the 1,000 generated tenants and the rendered gateway.toml).
#   bash scripts/instructions-per-request.sh [ENV=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/bench-data.sh
out=$(mktemp -d); trap 'rm -rf "$out"; kill $(jobs -p) 2>/dev/null || true' EXIT
one() { # seconds of load -> "requests instructions"
  "$UPSTREAM" --listen 127.0.0.1:18080 --threads 1 >/dev/null 2>&1 & local up=$!
  env TOKIO_WORKER_THREADS=1 "$@" valgrind --tool=callgrind "${sim[@]}" --callgrind-out-file="$out/cg.%p" \
    "${proxy[@]}" >/dev/null 2>&1 & local gw=$!
  for _ in $(seq 150); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
  wrk -t1 -c20 -d"${WARMUP_SECS:-3}"s -s "$BENCH/lib/wrk_tenants.lua" "http://127.0.0.1:$port/api/messages" -- "$B/out/data/wrk_tenants.lua" >/dev/null
  wrk -t1 -c20 -d"$SECS"s -s "$BENCH/lib/wrk_tenants.lua" "http://127.0.0.1:$port/api/messages" -- "$B/out/data/wrk_tenants.lua" >/dev/null
  local n; n=$(curl -s http://127.0.0.1:18080/__stats | sed -E 's/.*"requests":([0-9]+).*/\1/')
  kill "$gw"; wait "$gw" 2>/dev/null || true; kill "$up"; wait "$up" 2>/dev/null || true
  # Events in the order of the file's `events:` line: Ir, then with CACHE_SIM I1mr at 4, Bcm at 11, Bim at 13.
  echo "$n $(cat "$out"/cg.* | awk '/^summary:/ { s += $2; m += $5; b += $12 + $14 } END { printf "%.0f %.0f %.0f\n", s, m, b }')"; rm -f "$out"/cg.*
}
proxy=("${GATEWAY_BIN:-target/release/tenantgate}" run --config "$B/out/run/gateway.toml") port=18084
if [ "${NGINX:-0}" = 1 ]; then
  proxy=(nginx -e stderr -p "$B/out/run/nginx/" -c "$B/out/run/nginx.conf" -g "daemon off; master_process off;") port=18081
fi
sim=()
[ "${CACHE_SIM:-0}" = 1 ] && sim=(--cache-sim=yes --branch-sim=yes --I1=32768,8,64 --D1=49152,12,64 --LL=2097152,16,64)
read -r na ia ma ba <<<"$(SECS=2 one "$@")"
read -r nb ib mb bb <<<"$(SECS=8 one "$@")"
echo "requests $na / $nb, instructions $ia / $ib -> $(( (ib - ia) / (nb - na) )) instructions per request"
if [ "${CACHE_SIM:-0}" = 1 ]; then
  echo "per request: $(( (mb - ma) / (nb - na) )) I1 misses, $(( (bb - ba) / (nb - na) )) mispredicted branches"
fi
