#!/usr/bin/env bash
# bench-mongodb.sh — the MongoDB store against the file store, in the same run, on the shared
# benchmark's workload (../shared/bench: its tenants, its upstream, its wrk script).
#
#   GATEWAY_BIN=target/release/tenantgate bash scripts/bench-mongodb.sh
#
# 1. Warm cache: two gateways (file store, MongoDB store on the smongo test server), one Tokio
#    worker each, raced with wrk in rounds of four runs (file, mongodb, mongodb, file);
#    throughput ratio mongodb/file and proxy CPU per request (utime+stime of the gateway
#    process over the timed run).
# 2. Cold start: a fresh MongoDB-store gateway; for 100 never-seen tenants, the time of the first
#    request (store lookup + forward) and of the second (cache hit); medians, and the median of
#    the per-tenant difference (the added latency of a cache miss).
#
# Needs: wrk, curl, python3; the smongo venv of scripts/test.sh (.venv; installed if missing).
# Settings (environment): ROUNDS=4 DURATION=5 WARMUP=1 CONNECTIONS=50 TENANTS=1000, and CPU
# pinning PROXY_CPUS=1 LOADGEN_CPUS=0 (wrk and the upstream) — on a shared 2-core machine,
# unpinned runs swing by ±40% with whichever process the scheduler puts where.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${GATEWAY_BIN:=$PWD/target/release/tenantgate}"
: "${ROUNDS:=4}" "${DURATION:=5}" "${WARMUP:=1}" "${CONNECTIONS:=50}" "${TENANTS:=1000}"
: "${PROXY_CPUS:=1}" "${LOADGEN_CPUS:=0}"
BENCH_DIR=${BENCH_DIR:-$PWD/../shared/bench}
source scripts/lib/bench-common.sh
log() { printf '[bench-mongodb %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

[ -x "$GATEWAY_BIN" ] || { echo "GATEWAY_BIN=$GATEWAY_BIN is not an executable (cargo build --release)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
venv=${TENANTGATE_TEST_VENV:-$PWD/.venv}
if ! "$venv/bin/python" -c 'import smongo, pymongo' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet smongo==1.2.8 'pymongo>=4,<5'
fi

# The shared workload: tenants and the upstream.
python3 "$BENCH_DIR/gen_tenants.py" --tenants "$TENANTS" --out "$WORK/data" >/dev/null
UPSTREAM_BIN=${TMPDIR:-/tmp}/tenantgate-bench/upstream-target/release/bench-upstream
if [ ! -x "$UPSTREAM_BIN" ]; then
    log "building the bench upstream"
    CARGO_TARGET_DIR="$(dirname "$(dirname "$UPSTREAM_BIN")")" cargo build --quiet --release --manifest-path "$BENCH_DIR/upstream/Cargo.toml"
fi
up_port=$(free_port)
taskset -c "$LOADGEN_CPUS" "$UPSTREAM_BIN" --listen "127.0.0.1:$up_port" --threads 1 >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)

# The MongoDB-wire test server, holding the same tenants.
start_smongo "$venv"

gateway_config() { # name port kind
    cat >"$WORK/$1.toml" <<EOF
[server]
listen = "127.0.0.1:$2"
[upstream]
url = "http://127.0.0.1:$up_port"
[admin]
listen = ""
[store]
kind = "$3"
path = "$WORK/data/tenants.json"
uri = "$uri"
watch_changes = false
EOF
}
gateway_config file "$(free_port)" file
gateway_config mongodb "$(free_port)" mongodb
gateway_config cold "$(free_port)" mongodb
"$GATEWAY_BIN" tenants --config "$WORK/mongodb.toml" import "$WORK/data/tenants.json" >&2

declare -A PORT PID
for g in file mongodb; do
    PORT[$g]=$(sed -n 's/^listen = "127.0.0.1:\([0-9]*\)"/\1/p' "$WORK/$g.toml")
    TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPUS" "$GATEWAY_BIN" run --config "$WORK/$g.toml" >"$WORK/$g.log" 2>&1 &
    PID[$g]=$!
    PIDS+=($!)
    wait_http "http://127.0.0.1:${PORT[$g]}/"
done

run_wrk() { # port seconds
    taskset -c "$LOADGEN_CPUS" wrk -t1 -c"$CONNECTIONS" -d"$2"s --timeout 5s -s "$BENCH_DIR/lib/wrk_tenants.lua" \
        "http://127.0.0.1:$1/api/messages" -- "$WORK/data/wrk_tenants.lua" | sed -n 's/^WRKJSON //p'
}
tck=$(getconf CLK_TCK)
echo "| round | store | req/s | p99 ms | proxy CPU µs/req | non-2xx |"
echo "|---|---|---|---|---|---|"
declare -A TOTAL
for round in $(seq "$ROUNDS"); do
    # ABBA: a drift of the machine's speed within a round hits both stores alike.
    for g in file mongodb mongodb file; do
        run_wrk "${PORT[$g]}" "$WARMUP" >/dev/null
        c0=$(cpu_ticks "${PID[$g]}")
        w=$(run_wrk "${PORT[$g]}" "$DURATION")
        c1=$(cpu_ticks "${PID[$g]}")
        python3 - "$round" "$g" "$w" "$c0" "$c1" "$tck" <<'EOF'
import json, sys
r, g, w, c0, c1, tck = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
cpu_us = (c1 - c0) / tck * 1e6 / max(w["requests"], 1)
print(f"| {r} | {g} | {w['rps']:.0f} | {w['p99_us']/1000:.2f} | {cpu_us:.1f} | {w['err_status']} |")
EOF
        TOTAL[$g]=$(python3 -c "import json,sys; print(${TOTAL[$g]:-0} + json.loads(sys.argv[1])['rps'])" "$w")
    done
done
python3 -c "import sys; f, m = float(sys.argv[1]), float(sys.argv[2]); print(f'\nmongodb / file throughput (sum over rounds): {m / f:.3f}')" "${TOTAL[file]}" "${TOTAL[mongodb]}"

# Cold start: never-seen tenants on a fresh MongoDB-store gateway.
cold_port=$(sed -n 's/^listen = "127.0.0.1:\([0-9]*\)"/\1/p' "$WORK/cold.toml")
TOKIO_WORKER_THREADS=1 "$GATEWAY_BIN" run --config "$WORK/cold.toml" >"$WORK/cold.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$cold_port/"
curl -s -o /dev/null "http://127.0.0.1:$cold_port/" # connect the driver's pool (one unknown-key miss is not measured)
python3 - "$WORK/data/expected.tsv" "$cold_port" <<'EOF'
import csv, statistics, subprocess, sys
rows = [r for r in csv.reader(open(sys.argv[1]), delimiter="\t") if not r[0].startswith("#") and r[-1] in ("1", "true", "True")]
def timed(key, origin):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
        "-H", f"X-Tenant-ID: {key}", "-H", f"Origin: {origin}", f"http://127.0.0.1:{sys.argv[2]}/api/messages"],
        capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "200", out
    return float(out[1]) * 1000
first, second = [], []
for key, origin, *_ in rows[500:600]:
    first.append(timed(key, origin)); second.append(timed(key, origin))
print(f"cold start, 100 never-seen tenants: first response median {statistics.median(first):.2f} ms, "
      f"cached median {statistics.median(second):.2f} ms, "
      f"added by the miss (median of differences) {statistics.median(a - b for a, b in zip(first, second)):.2f} ms")
EOF
