#!/usr/bin/env bash
# bench-cluster.sh — what [cluster] scope = "cluster" costs.
#
#   GATEWAY_BIN=target/release/tenantgate bash scripts/bench-cluster.sh
#
# 1. Per request: scripts/instructions-per-request.sh (callgrind, the bench workload's 1,000
#    tenants) on the MongoDB store with scope "replica" and with scope "cluster", same binary,
#    same run. The cluster scope adds the heartbeat task; the request path reads the same atomics.
# 2. Background traffic per replica: three replicas (scope "cluster", default 1 s heartbeat and
#    flush) on one smongo server; wrk drives BUSY tenants (1, 10, 100, 1000) through one of
#    them for SECS seconds; every replica's tenantgate_cluster_* counters (documents and BSON
#    bytes written and read: heartbeats, quota leases, usage) are read before and after. First
#    with the bench's caps of 100 (each tenant's ~1 request in flight stays within every
#    replica's even split: nothing to coordinate), then with every cap set to 1 and the load
#    through the replica whose even split of 1 is 0 (every busy tenant coordinated: the worst
#    case).
#
# Needs: a release build, valgrind, wrk, the smongo venv of scripts/test.sh (.venv), and one
# earlier run of ../shared/bench/run.sh (the bench upstream, tenants and gateway.toml).
# Settings: SECS=10 BUSY="1 10 100 1000".
set -euo pipefail
cd "$(dirname "$0")/.."
: "${GATEWAY_BIN:=$PWD/target/release/tenantgate}" "${SECS:=10}" "${BUSY:=1 10 100 1000}"
source scripts/lib/bench-data.sh
source scripts/lib/bench-common.sh
venv=${TENANTGATE_TEST_VENV:-$PWD/.venv}
log() { printf '[bench-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

start_smongo "$venv"
cat >"$WORK/import.toml" <<EOF
[store]
kind = "mongodb"
uri = "$uri"
EOF
"$GATEWAY_BIN" tenants --config "$WORK/import.toml" import "$B/out/data/tenants.json" >&2

log "1. instructions per request, scope replica then cluster"
for scope in replica cluster; do
    printf 'scope %-8s ' "$scope"
    GATEWAY_BIN=$GATEWAY_BIN bash scripts/instructions-per-request.sh TENANTGATE_STORE_KIND=mongodb \
        TENANTGATE_STORE_URI="$uri" TENANTGATE_STORE_WATCH_CHANGES=false TENANTGATE_CLUSTER_SCOPE="$scope" \
        RUST_LOG=warn | tail -1
done

log "2. heartbeat and flush traffic per replica"
up_port=$(free_port)
"$UPSTREAM" --listen "127.0.0.1:$up_port" --threads 1 >/dev/null 2>&1 &
PIDS+=($!)
declare -a PORTS ADMINS RPIDS
start_replica() {
    RUST_LOG=warn TOKIO_WORKER_THREADS=1 "$GATEWAY_BIN" run --config "$WORK/r$1.toml" >>"$WORK/r$1.log" 2>&1 &
    RPIDS[$1]=$!
    PIDS+=($!)
    wait_http "http://127.0.0.1:${ADMINS[$1]}/healthz"
}
for i in 0 1 2; do
    PORTS[$i]=$(free_port) ADMINS[$i]=$(free_port)
    cat >"$WORK/r$i.toml" <<EOF
[server]
listen = "127.0.0.1:${PORTS[$i]}"
[upstream]
url = "http://127.0.0.1:$up_port"
[admin]
listen = "127.0.0.1:${ADMINS[$i]}"
[store]
kind = "mongodb"
uri = "$uri"
watch_changes = false
[cluster]
scope = "cluster"
replica_id = "bench-$i"
EOF
    start_replica "$i"
done
sleep 2
counters() { # admin port -> "docs_written bytes_written docs_read bytes_read"
    curl -s "http://127.0.0.1:$1/metrics" | awk '
        /^tenantgate_cluster_documents_written_total/ { dw = $2 }
        /^tenantgate_cluster_bytes_written_total/ { bw = $2 }
        /^tenantgate_cluster_documents_read_total/ { dr = $2 }
        /^tenantgate_cluster_bytes_read_total/ { br = $2 }
        END { print dw + 0, bw + 0, dr + 0, br + 0 }'
}
measure() { # caps, index of the replica the load goes through, busy tenant counts...
    local caps=$1 via=$2
    shift 2
    for busy in "$@"; do
        # The first BUSY tenants of the bench's list.
        python3 -c '
import re, sys
rows = re.findall(r"\{\s*\"[^\"]*\"\s*,\s*\"[^\"]*\"\s*\}", open(sys.argv[1]).read())
print("return {\n" + ",\n".join(rows[: int(sys.argv[2])]) + "\n}")
' "$B/out/data/wrk_tenants.lua" "$busy" >"$WORK/busy.lua"
        local url="http://127.0.0.1:${PORTS[$via]}/api/messages"
        wrk -t1 -c20 -d2s -s "$BENCH/lib/wrk_tenants.lua" "$url" -- "$WORK/busy.lua" >/dev/null
        local before=()
        for i in 0 1 2; do before[$i]=$(counters "${ADMINS[$i]}"); done
        wrk -t1 -c20 -d"${SECS}"s -s "$BENCH/lib/wrk_tenants.lua" "$url" -- "$WORK/busy.lua" >/dev/null
        for i in 0 1 2; do
            python3 -c '
import sys
caps, busy, i, via, secs = sys.argv[1:5] + [float(sys.argv[5])]
b = [float(x) for x in sys.argv[6].split()]
a = [float(x) for x in sys.argv[7].split()]
d = [(y - x) / secs for x, y in zip(b, a)]
role = "loaded" if i == via else "idle"
print(f"| {caps} | {busy} | {i} ({role}) | {d[0]:.1f} | {d[1]:,.0f} | {d[2]:.1f} | {d[3]:,.0f} |")
' "$caps" "$busy" "$i" "$via" "$SECS" "${before[$i]}" "$(counters "${ADMINS[$i]}")"
        done
    done
}
echo "| caps | busy tenants | replica | documents written/s | bytes written/s | documents read/s | bytes read/s |"
echo "|---|---|---|---|---|---|---|"
measure 100 0 1000
# Every cap 1, and the replicas restarted so that they read it.
"$venv/bin/python" -c "
import sys
from pymongo import MongoClient
MongoClient(sys.argv[1]).tenantgate.tenants.update_many({}, {'\$set': {'maxConcurrentConnections': 1}})
" "$uri"
for i in 0 1 2; do kill "${RPIDS[$i]}"; wait "${RPIDS[$i]}" 2>/dev/null || true; done
for i in 0 1 2; do start_replica "$i"; done
sleep 2
# shellcheck disable=SC2086
measure 1 2 $BUSY
