#!/usr/bin/env bash
# bench-websocket.sh — WebSocket message throughput through the gateway versus direct to the
# backend (same run), and the gateway's memory per idle WebSocket.
#
#   GATEWAY_BIN=target/release/tenantgate bash scripts/bench-websocket.sh
#
# Load and backend: examples/ws_bench.rs (tokio-tungstenite), built here in release mode.
# Settings (environment): SOCKETS=50 SECS=10 BYTES=128 (throughput), IDLE=9000 (idle sockets;
# the gateway holds two file descriptors per socket, so IDLE is bounded by `ulimit -n` / 2).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${GATEWAY_BIN:=$PWD/target/release/tenantgate}"
: "${SOCKETS:=50}" "${SECS:=10}" "${BYTES:=128}" "${IDLE:=9000}"
source scripts/lib/bench-common.sh
ulimit -n "$(ulimit -Hn)"

BENCH=target/release/examples/ws_bench
# SKIP_BUILD=1 reuses an earlier build of the load tool (it does not contain the gateway).
[ -n "${SKIP_BUILD:-}" ] && [ -x "$BENCH" ] || cargo build --quiet --release --example ws_bench
backend_port=$(free_port)
gateway_port=$(free_port)
"$BENCH" echo "127.0.0.1:$backend_port" &
PIDS+=($!)
cat >"$WORK/tenants.json" <<EOF
[{"apiKey": "tnt_bench", "allowedOrigins": ["https://bench.example"], "isActive": true,
  "maxConcurrentConnections": 100000,
  "providerConfig": {"resources": {"endpoint": "https://res.example", "region": "r"}}}]
EOF
cat >"$WORK/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$gateway_port"
max_connections = 100000
[upstream]
url = "http://127.0.0.1:$backend_port"
[store]
path = "$WORK/tenants.json"
[admin]
listen = ""
EOF
TOKIO_WORKER_THREADS=1 RUST_LOG=warn "$GATEWAY_BIN" run --config "$WORK/gateway.toml" &
gw=$!
PIDS+=($gw)
wait_http "http://127.0.0.1:$gateway_port/"
tck=$(getconf CLK_TCK)

echo "| path | sockets | message | messages/s | gateway CPU µs/message |"
echo "|---|---|---|---|---|"
for target in direct gateway; do
    port=$backend_port
    [ "$target" = gateway ] && port=$gateway_port
    c0=$(cpu_ticks "$gw")
    out=$("$BENCH" throughput "ws://127.0.0.1:$port/ws" "$SOCKETS" "$SECS" "$BYTES")
    c1=$(cpu_ticks "$gw")
    python3 - "$target" "$out" "$c0" "$c1" "$tck" "$SOCKETS" "$BYTES" <<'EOF'
import sys
target, out, c0, c1, tck, sockets, size = sys.argv[1], sys.argv[2].split(), *map(int, sys.argv[3:])
n, rate = int(out[1]), float(out[5])
cpu = f"{(c1 - c0) / tck * 1e6 / n:.1f}" if target == "gateway" else "-"
print(f"| {target} | {sockets} | {size} B | {rate:.0f} | {cpu} |")
EOF
done

before=$(rss_kib "$gw")
"$BENCH" idle "ws://127.0.0.1:$gateway_port/ws" "$IDLE" 3600 >"$WORK/idle.out" &
idle_pid=$!
PIDS+=($idle_pid)
for _ in $(seq 1200); do grep -q '^open' "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^open' "$WORK/idle.out" || { echo "the idle sockets did not all open" >&2; exit 1; }
sleep 2
after=$(rss_kib "$gw")
python3 -c "import sys; b, a, n = map(int, sys.argv[1:]); print(f'\n{n} idle WebSockets: gateway RSS {b / 1024:.1f} MiB -> {a / 1024:.1f} MiB, {(a - b) / n:.1f} KiB per socket (client and backend sides)')" "$before" "$after" "$IDLE"
