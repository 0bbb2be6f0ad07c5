#!/usr/bin/env bash
# User and system CPU per proxied request, nginx against one or more tenantgate binaries, with
# less noise than bench/run.sh: the proxy pinned to core 1, wrk and the upstream to core 0,
# utime/stime read from /proc/<pid>/stat around a ${SECS:-8} s wrk run (50 connections, the
# bench's tenant rotation), ${ROUNDS:-3} rounds, contenders alternating within each round.
# Needs: 2+ cores, wrk, nginx, and one earlier run of ../shared/bench/run.sh (upstream, tenants,
# rendered configs).
#   bash scripts/cpu-per-request.sh target/release/tenantgate [/path/to/other/tenantgate ...]
set -u
B=${BENCH_WORK:-/tmp/tenantgate-bench}; BENCH=${BENCH_DIR:-$(cd "$(dirname "$0")/.." && pwd)/../shared/bench}
UP="$B/upstream-target/release/bench-upstream"
[ -x "$UP" ] && [ -f "$B/out/run/gateway.toml" ] || { echo "run $BENCH/run.sh once first" >&2; exit 1; }
[ $# -ge 1 ] || { echo "usage: $0 GATEWAY_BIN [GATEWAY_BIN ...]" >&2; exit 2; }
taskset -c 0 "$UP" --listen 127.0.0.1:18080 --threads 1 >/dev/null 2>&1 & up=$!
trap 'kill $up 2>/dev/null' EXIT
ticks() { local u=0 s=0 p a b; for p in "$@"; do read -r a b < <(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12, $13}'); u=$((u + a)); s=$((s + b)); done; echo "$u $s"; }
measure() { # name port cmd...
  local name=$1 port=$2; shift 2
  taskset -c 1 "$@" >/dev/null 2>&1 & local pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  local wrk=(taskset -c 0 wrk -t1 -c50 -s "$BENCH/lib/wrk_tenants.lua")
  "${wrk[@]}" -d2s "http://127.0.0.1:$port/api/messages" -- "$B/out/data/wrk_tenants.lua" >/dev/null
  local pids; pids="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
  local u0 s0 u1 s1 out n
  read -r u0 s0 < <(ticks $pids)
  out=$("${wrk[@]}" -d"${SECS:-8}"s --latency "http://127.0.0.1:$port/api/messages" -- "$B/out/data/wrk_tenants.lua")
  read -r u1 s1 < <(ticks $pids)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  awk -v name="$name" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" -v hz="$(getconf CLK_TCK)" \
    -v rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')" -v p99="$(echo "$out" | awk '$1 == "99%" {print $2}')" \
    'BEGIN { printf "%-40s req/s %9s  p99 %7s  user %5.1f + sys %5.1f = %5.1f us/req\n", name, rps, p99, u * 1e6 / hz / n, s * 1e6 / hz / n, (u + s) * 1e6 / hz / n }'
  kill "$pid"; pkill -P "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
}
for round in $(seq "${ROUNDS:-3}"); do
  echo "round $round"
  measure nginx 18081 nginx -e stderr -p "$B/out/run/nginx/" -c "$B/out/run/nginx.conf" -g "daemon off;"
  for bin in "$@"; do
    measure "$bin" 18084 env TOKIO_WORKER_THREADS=1 "$bin" run --config "$B/out/run/gateway.toml"
  done
done
