#!/usr/bin/env bash
# CPU per proxied request and the latency spread, nginx against one or more tenantgate binaries,
# with less noise than bench/run.sh: by default the proxy is pinned to core 1, wrk and the
# upstream to core 0 (PIN=0: all unpinned, as bench/run.sh runs them). Per contender, a
# ${SECS:-8} s wrk run (50 connections, the bench's tenant rotation) after 2 s of warm-up,
# ${ROUNDS:-3} rounds, contenders alternating within each round. Columns: requests/s; wrk's p50,
# p90 and p99 and p99/p50; the proxy's user + system CPU per request (/proc/<pid>/stat); the
# upstream's and wrk's CPU per request; the proxy's voluntary (it slept) and involuntary (it was
# preempted) context switches per 1,000 requests, all its threads.
# Needs: 2+ cores, wrk, nginx, and one earlier run of ../shared/bench/run.sh (upstream, tenants,
# rendered configs). NGINX_CONF=another nginx.conf (same listen port) replaces the bench's.
#   bash scripts/cpu-per-request.sh target/release/tenantgate [/path/to/other/tenantgate ...]
set -u
source "$(dirname "$0")/lib/bench-data.sh"
[ $# -ge 1 ] || { echo "usage: $0 GATEWAY_BIN [GATEWAY_BIN ...]" >&2; exit 2; }
if [ "${PIN:-1}" = 0 ]; then front=(); back=(); else front=(taskset -c 0); back=(taskset -c 1); fi
"${front[@]}" "$UPSTREAM" --listen 127.0.0.1:18080 --threads 1 >/dev/null 2>&1 & up=$!
trap 'kill $up 2>/dev/null' EXIT
# user and system clock ticks of the given processes
ticks() { local u=0 s=0 p a b; for p in "$@"; do read -r a b < <(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12, $13}'); u=$((u + a)); s=$((s + b)); done; echo "$u $s"; }
# voluntary and involuntary context switches of every thread of the given processes
switches() { local p; for p in "$@"; do cat /proc/"$p"/task/*/status; done | awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v, n}'; }
measure() { # name port cmd...
  local name=$1 port=$2; shift 2
  "${back[@]}" "$@" >/dev/null 2>&1 & local pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  local wrk=("${front[@]}" wrk -t1 -c50 -s "$BENCH/lib/wrk_tenants.lua")
  "${wrk[@]}" -d2s "http://127.0.0.1:$port/api/messages" -- "$B/out/data/wrk_tenants.lua" >/dev/null
  local pids; pids="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
  local u0 s0 u1 s1 uu0 us0 uu1 us1 v0 n0 v1 n1 out n
  read -r u0 s0 < <(ticks $pids); read -r uu0 us0 < <(ticks $up); read -r v0 n0 < <(switches $pids)
  out=$(/usr/bin/time -f "wrk-cpu %U %S" "${wrk[@]}" -d"${SECS:-8}"s --latency "http://127.0.0.1:$port/api/messages" -- "$B/out/data/wrk_tenants.lua" 2>&1)
  read -r u1 s1 < <(ticks $pids); read -r uu1 us1 < <(ticks $up); read -r v1 n1 < <(switches $pids)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  pct() { echo "$out" | awk -v p="$1" '$1 == p {v = $2; if (v ~ /us$/) v = v / 1000; else if (v ~ /s$/ && v !~ /ms$/) v = v * 1000; print v + 0}'; }
  awk -v name="$name" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v up=$((uu1 + us1 - uu0 - us0)) -v n="$n" -v hz="$(getconf CLK_TCK)" \
    -v wrk="$(echo "$out" | awk '/wrk-cpu/ {print $2 + $3}')" -v vol=$((v1 - v0)) -v inv=$((n1 - n0)) \
    -v rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')" -v p50="$(pct 50%)" -v p90="$(pct 90%)" -v p99="$(pct 99%)" \
    'BEGIN { printf "%-34s req/s %8.0f  p50/p90/p99 %4.2f/%4.2f/%4.2f ms (p99/p50 %4.2f)  CPU us/req: proxy %4.1f + %4.1f = %4.1f, upstream %4.1f, wrk %4.1f  switches/kreq: %5.1f slept, %4.1f preempted\n",
             name, rps, p50, p90, p99, p99 / p50, u * 1e6 / hz / n, s * 1e6 / hz / n, (u + s) * 1e6 / hz / n, up * 1e6 / hz / n, wrk * 1e6 / n, vol * 1000 / n, inv * 1000 / n }'
  kill "$pid"; pkill -P "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
}
for round in $(seq "${ROUNDS:-3}"); do
  echo "round $round"
  measure nginx 18081 nginx -e stderr -p "$B/out/run/nginx/" -c "${NGINX_CONF:-$B/out/run/nginx.conf}" -g "daemon off;"
  for bin in "$@"; do
    measure "$bin" 18084 env TOKIO_WORKER_THREADS=1 "$bin" run --config "$B/out/run/gateway.toml"
  done
done
