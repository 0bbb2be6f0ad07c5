#!/usr/bin/env bash
# bench-connections.sh — what open connections cost tenantgate and nginx, side by side in one run
# (the figures of BENCHMARKS.md, "Cheap connections"):
#   - memory per idle connection (RSS growth of the serving process, from /proc): HTTP/1.1
#     keep-alive, TLS (HTTP/1.1, after one request), HTTP/2 (TLS, ALPN h2, after one request),
#     WebSocket (client and backend sides);
#   - held load: the shared bench's workload (wrk, the bench's tenants in rotation, 50
#     connections) with and without HELD idle keep-alive connections held open beside it;
#   - accept storm: STORM connections opened at once, one GET each: answers by status, failures.
#
#   GATEWAY_BIN=target/release/tenantgate bash scripts/bench-connections.sh
#
# Settings (environment): IDLE=10000 (connections per idle figure; the figure is the slope of RSS from
# 2,000 to IDLE connections), TLS_IDLE=6000 (the same over TLS and HTTP/2: the Python client's
# own TLS and h2 state is large), WS_IDLE=5000, HELD=15000, STORM=5000, DURATION=10 (seconds per wrk run),
# ONLY="idle ws held storm" (a subset), KINDS="http https h2" (for the idle figure),
# TARGETS="nginx gateway".
# Each figure comes from a freshly started process: tenantgate with one worker thread, nginx with
# one worker process (its worker's RSS), both with keep-alive timeouts of 300 s so that nothing
# closes while connections are held. Needs the shared bench's data and backend (this script runs
# the bench's correctness phase when they are missing), nginx, wrk, openssl, and Python's `h2`
# (installed into .venv when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${GATEWAY_BIN:=$PWD/target/release/tenantgate}"
: "${IDLE:=10000}" "${TLS_IDLE:=6000}" "${WS_IDLE:=5000}" "${HELD:=15000}" "${STORM:=5000}" "${DURATION:=10}"
: "${ONLY:=idle ws held storm}" "${KINDS:=http https h2}" "${TARGETS:=nginx gateway}"
: "${BENCH_WORK:=${TMPDIR:-/tmp}/tenantgate-bench}"
source scripts/lib/bench-common.sh
ulimit -n "$(ulimit -Hn)"
[ -x "$GATEWAY_BIN" ] || { echo "no gateway binary at $GATEWAY_BIN (cargo build --release)" >&2; exit 1; }

DATA="$BENCH_WORK/out/data"
UPSTREAM_BIN="$BENCH_WORK/upstream-target/release/bench-upstream"
if [ ! -f "$DATA/tenants.json" ] || [ ! -x "$UPSTREAM_BIN" ]; then
    echo "bench-connections: preparing the shared bench's data and backend" >&2
    CORRECTNESS_ONLY=1 CONTENDERS="nginx gateway" GATEWAY_BIN="$GATEWAY_BIN" \
        BENCH_WORK="$BENCH_WORK" bash ../shared/bench/run.sh >&2
fi
venv=${TENANTGATE_TEST_VENV:-$PWD/.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import h2' 2>/dev/null ||
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'h2>=4,<5'
PY="$venv/bin/python"
WS_BENCH=target/release/examples/ws_bench
[ -n "${SKIP_BUILD:-}" ] && [ -x "$WS_BENCH" ] || cargo build --quiet --release --example ws_bench

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=tenantgate-bench" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

upstream_port=$(free_port)
"$UPSTREAM_BIN" --listen "127.0.0.1:$upstream_port" --threads 1 >/dev/null 2>&1 &
PIDS+=($!)
ws_port=$(free_port)
"$WS_BENCH" echo "127.0.0.1:$ws_port" &
PIDS+=($!)
wait_http "http://127.0.0.1:$upstream_port/"

cat >"$WORK/ws-tenants.json" <<EOF
[{"apiKey": "tnt_bench", "allowedOrigins": ["https://bench.example"], "isActive": true,
  "maxConcurrentConnections": 100000,
  "providerConfig": {"resources": {"endpoint": "https://res.example", "region": "r"}}}]
EOF

# Starts TARGET serving KIND (http | https | h2 | ws) on a fresh port; sets PORT and PID (the
# process whose RSS is measured: the gateway, or nginx's one worker).
start() {
    local target=$1 kind=$2
    PORT=$(free_port)
    if [ "$target" = gateway ]; then
        local upstream="http://127.0.0.1:$upstream_port" tenants="$DATA/tenants.json" tls=""
        [ "$kind" = ws ] && upstream="http://127.0.0.1:$ws_port" tenants="$WORK/ws-tenants.json"
        case "$kind" in https|h2) tls=$(printf '[tls]\ncert = "%s"\nkey = "%s"' "$WORK/cert.pem" "$WORK/key.pem") ;; esac
        cat >"$WORK/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"
max_connections = 100000
header_read_timeout_secs = 300
[upstream]
url = "$upstream"
[store]
path = "$tenants"
[admin]
listen = ""
$tls
EOF
        TENANTGATE_CACHE_MISS_LOOKUPS_PER_SEC=0 TOKIO_WORKER_THREADS=1 RUST_LOG=warn \
            "$GATEWAY_BIN" run --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
        PID=$!
        PIDS+=($PID)
    else
        local listen="listen 127.0.0.1:$PORT backlog=4096;" site
        case "$kind" in
        https|h2) listen="listen 127.0.0.1:$PORT ssl http2 backlog=4096; ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem; ssl_protocols TLSv1.2 TLSv1.3;" ;;
        esac
        if [ "$kind" = ws ]; then
            site="location / { proxy_pass http://127.0.0.1:$ws_port; proxy_http_version 1.1;
                proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection upgrade;
                proxy_read_timeout 300s; }"
        else
            site="if (\$tenant_endpoint = \"\") { return 401; }
                if (\$tenant_origin_ok = 0) { return 403; }
                location / { proxy_pass http://backend; proxy_http_version 1.1;
                    proxy_set_header Connection \"\";
                    proxy_set_header X-Tenant-Provider-Endpoint \$tenant_endpoint;
                    proxy_set_header X-Tenant-Provider-Region \$tenant_region;
                    add_header Access-Control-Allow-Origin \$http_origin;
                    add_header Vary Origin; }"
        fi
        mkdir -p "$WORK/nginx"
        cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 20000; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    map_hash_max_size 16384;
    map_hash_bucket_size 128;
    map \$http_x_tenant_id \$tenant_endpoint { default ""; include $DATA/nginx_endpoint.map; }
    map \$http_x_tenant_id \$tenant_region { default ""; include $DATA/nginx_region.map; }
    map "\$http_x_tenant_id|\$http_origin" \$tenant_origin_ok { default 0; include $DATA/nginx_origin.map; }
    upstream backend { server 127.0.0.1:$upstream_port; keepalive 1024; keepalive_timeout 300s; }
    server { $listen $site }
}
EOF
        nginx -c "$WORK/nginx.conf" -e stderr
        local master
        for _ in $(seq 50); do master=$(cat "$WORK/nginx/nginx.pid" 2>/dev/null) && [ -n "$master" ] && break; sleep 0.1; done
        for _ in $(seq 50); do PID=$(pgrep -P "$master" | head -n1) && [ -n "$PID" ] && break; sleep 0.1; done
        STOP_NGINX=$master
    fi
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$target did not start (kind $kind)" >&2
    exit 1
}

stop() {
    if [ -n "${STOP_NGINX:-}" ]; then
        kill -QUIT "$STOP_NGINX" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$STOP_NGINX" 2>/dev/null || break; sleep 0.1; done
        STOP_NGINX=""
    else
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
}
trap 'stop; cleanup' EXIT

# wrk with the shared bench's workload; prints "requests/s p99_ms" from its WRKJSON line.
load() {
    wrk -t1 -c50 -d"${DURATION}s" --timeout 5s -s ../shared/bench/lib/wrk_tenants.lua \
        "http://127.0.0.1:$1/api/messages" -- "$DATA/wrk_tenants.lua" |
        sed -n 's/^WRKJSON //p' |
        python3 -c 'import json, sys; w = json.load(sys.stdin); e = sum(v for k, v in w.items() if k.startswith("err_")); print("%.0f %.2f %d" % (w["rps"], w["p99_us"] / 1000, e))'
}

results="$WORK/results.jsonl"
record() { echo "$1" >>"$results"; echo "$1" >&2; }
want() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if want idle; then
    for kind in $KINDS; do
        for target in $TARGETS; do
            start "$target" "$kind"
            n=$IDLE
            [ "$kind" = http ] || n=$TLS_IDLE
            out=$("$PY" scripts/connection-costs.py idle "$kind" "$PORT" "$PID" "$n")
            record "{\"figure\":\"idle\",\"target\":\"$target\",\"result\":$out}"
            stop
        done
    done
fi

if want ws; then
    for target in $TARGETS; do
        start "$target" ws
        "$WS_BENCH" idle "ws://127.0.0.1:$PORT/ws" 1000 3600 >"$WORK/warm.out" &
        warm=$!
        for _ in $(seq 600); do grep -q '^open' "$WORK/warm.out" 2>/dev/null && break; sleep 0.1; done
        sleep 1
        before=$(rss_kib "$PID")
        "$WS_BENCH" idle "ws://127.0.0.1:$PORT/ws" "$WS_IDLE" 3600 >"$WORK/idle.out" &
        holder=$!
        for _ in $(seq 1200); do grep -q '^open' "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
        grep -q '^open' "$WORK/idle.out" || { echo "the idle WebSockets did not all open ($target)" >&2; exit 1; }
        sleep 2
        after=$(rss_kib "$PID")
        kill "$warm" "$holder"
        wait "$warm" "$holder" 2>/dev/null || true
        record "{\"figure\":\"ws\",\"target\":\"$target\",\"result\":{\"sockets\":$WS_IDLE,\"kib_per_socket\":$(python3 -c "print(round(($after - $before) / $WS_IDLE, 2))")}}"
        stop
    done
fi

if want held; then
    for target in $TARGETS; do
        start "$target" http
        load "$PORT" >/dev/null # warm-up: caches, pools
        read -r rps0 p99_0 err0 < <(load "$PORT")
        exec 4> >("$PY" scripts/connection-costs.py hold "$PORT" "$HELD" >"$WORK/hold.out")
        for _ in $(seq 1200); do grep -q open "$WORK/hold.out" 2>/dev/null && break; sleep 0.1; done
        grep -q open "$WORK/hold.out" || { echo "the $HELD held connections did not open ($target)" >&2; exit 1; }
        rss=$(rss_kib "$PID")
        read -r rps1 p99_1 err1 < <(load "$PORT")
        exec 4>&-
        sleep 1
        record "{\"figure\":\"held\",\"target\":\"$target\",\"result\":{\"held\":$HELD,\"rps\":[$rps0,$rps1],\"p99_ms\":[$p99_0,$p99_1],\"errors\":[$err0,$err1],\"rss_mib_held\":$((rss / 1024))}}"
        stop
    done
fi

if want storm; then
    for target in $TARGETS; do
        start "$target" http
        out=$("$PY" scripts/connection-costs.py storm "$PORT" "$STORM")
        record "{\"figure\":\"storm\",\"target\":\"$target\",\"result\":$out}"
        stop
    done
fi

python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def get(figure, target):
    return next((r["result"] for r in rows if r["figure"] == figure and r["target"] == target), None)
targets = sorted({r["target"] for r in rows}, key=lambda t: t != "nginx")
def ratio(figure, key, kind=None):
    vals = {}
    for t in targets:
        for r in rows:
            if r["figure"] == figure and r["target"] == t and (kind is None or r["result"].get("proto") == kind):
                vals[t] = r["result"][key]
    return vals
print("| figure | " + " | ".join(targets) + " | gateway / nginx |")
print("|---|" + "---|" * (len(targets) + 1))
for kind in ("http", "https", "h2"):
    v = ratio("idle", "kib_per_connection", kind)
    if v:
        r = f"{v['gateway'] / v['nginx']:.2f}x" if v.get("nginx") and "gateway" in v else "-"
        print(f"| idle {kind} connection, KiB | " + " | ".join(f"{v.get(t, '-')}" for t in targets) + f" | {r} |")
v = ratio("ws", "kib_per_socket")
if v:
    r = f"{v['gateway'] / v['nginx']:.2f}x" if v.get("nginx") and "gateway" in v else "-"
    print("| idle WebSocket (both sides), KiB | " + " | ".join(f"{v.get(t, '-')}" for t in targets) + f" | {r} |")
held = {t: get("held", t) for t in targets if get("held", t)}
if held:
    n = next(iter(held.values()))["held"]
    print(f"| requests/s on 50 connections: alone → beside {n:,} idle (change) | " + " | ".join(
        f"{h['rps'][0]:,} → {h['rps'][1]:,} ({(h['rps'][1] / h['rps'][0] - 1) * 100:+.1f} %)" for h in held.values()) + " | |")
    print(f"| p99 ms: alone → beside {n:,} idle | " + " | ".join(
        f"{h['p99_ms'][0]} → {h['p99_ms'][1]}" for h in held.values()) + " | |")
    print(f"| errors (wrk) alone, beside; RSS with {n:,} held | " + " | ".join(
        f"{h['errors'][0]}, {h['errors'][1]}; {h['rss_mib_held']} MiB" for h in held.values()) + " | |")
storm = {t: get("storm", t) for t in targets if get("storm", t)}
if storm:
    n = next(iter(storm.values()))["connections"]
    print(f"| accept storm: {n:,} connections at once, outcomes (seconds) | " + " | ".join(
        f"{s['outcomes']} ({s['seconds']} s)" for s in storm.values()) + " | |")
EOF
cat "$results" >&2
