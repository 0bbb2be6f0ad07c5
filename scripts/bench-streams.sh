#!/usr/bin/env bash
# bench-streams.sh — a 256 MiB upload and a 256 MiB download through the gateway, with the
# gateway's resident memory sampled every 50 ms during each transfer (flat memory = streaming,
# no buffering).
#
#   GATEWAY_BIN=target/release/tenantgate bash scripts/bench-streams.sh
#
# The backend is a small Python server (standard library) that discards uploads and produces
# downloads of zeros, so the gateway's process holds only the gateway. Needs curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${GATEWAY_BIN:=$PWD/target/release/tenantgate}"
: "${SIZE_MIB:=256}"
source scripts/lib/bench-common.sh

backend_port=$(free_port)
gateway_port=$(free_port)
cat >"$WORK/backend.py" <<'EOF'
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = b"\0" * (1 << 20)

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_PUT(self):
        left = int(self.headers["Content-Length"])
        while left:
            left -= len(self.rfile.read(min(left, 1 << 20)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def do_GET(self):
        mib = int(self.path.rsplit("/", 1)[-1])
        self.send_response(200)
        self.send_header("Content-Length", str(mib << 20))
        self.end_headers()
        for _ in range(mib):
            self.wfile.write(CHUNK)

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
python3 "$WORK/backend.py" "$backend_port" &
PIDS+=($!)
wait_http "http://127.0.0.1:$backend_port/download/0"
cat >"$WORK/tenants.json" <<'EOF'
[{"apiKey": "tnt_big", "allowedOrigins": [], "isActive": true, "maxConcurrentConnections": 10,
  "providerConfig": {"resources": {"endpoint": "https://res.example", "region": "r"}}}]
EOF
cat >"$WORK/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$gateway_port"
[upstream]
url = "http://127.0.0.1:$backend_port"
response_timeout_ms = 120000
[store]
path = "$WORK/tenants.json"
[admin]
listen = ""
[tenancy]
require_origin = false
EOF
TOKIO_WORKER_THREADS=1 RUST_LOG=warn "$GATEWAY_BIN" run --config "$WORK/gateway.toml" &
gw=$!
PIDS+=($gw)
wait_http "http://127.0.0.1:$gateway_port/"

truncate -s "${SIZE_MIB}M" "$WORK/upload.bin"

measure() { # label, curl args...
    local label=$1; shift
    local before peak=0 samples="$WORK/samples" start end
    before=$(rss_kib "$gw")
    : >"$samples"
    ( while true; do rss_kib "$gw" >>"$samples"; sleep 0.05; done ) &
    local sampler=$!
    start=$(date +%s.%N)
    curl -fsS -o /dev/null -H "X-Tenant-ID: tnt_big" "$@"
    end=$(date +%s.%N)
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    peak=$(sort -n "$samples" | tail -1)
    python3 -c "import sys; b, p, s, e, n = map(float, sys.argv[1:6]); print(f'| {sys.argv[6]} | {n:.0f} MiB | {n / (e - s):.0f} MiB/s | {b / 1024:.1f} MiB | {p / 1024:.1f} MiB | {(p - b) / 1024:+.1f} MiB |')" \
        "$before" "$peak" "$start" "$end" "$SIZE_MIB" "$label"
}
echo "| transfer | size | rate | gateway RSS before | peak during | growth |"
echo "|---|---|---|---|---|---|"
measure upload -T "$WORK/upload.bin" "http://127.0.0.1:$gateway_port/upload"
measure download "http://127.0.0.1:$gateway_port/download/$SIZE_MIB"
