# Shared by the scripts/bench-*.sh scripts (sourced): a scratch folder and the processes started
# there, both removed on exit, and small helpers.
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap '[ -n "${KEEP_LOGS:-}" ] && cp "$WORK"/*.log "$KEEP_LOGS"/ 2>/dev/null; cleanup' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
# The MongoDB-wire test server (smongo from the venv $1) on a free port with its data in $WORK,
# waited for with a real ping; sets `uri` (serverMonitoringMode=poll: see scripts/test.sh, a
# test-server quirk).
start_smongo() {
    local db_port
    db_port=$(free_port)
    "$1/bin/python" -m smongo.wire --host 127.0.0.1 --port "$db_port" --db-path "$WORK/db" >"$WORK/db.log" 2>&1 &
    PIDS+=($!)
    uri="mongodb://127.0.0.1:$db_port/?directConnection=true&serverMonitoringMode=poll"
    "$1/bin/python" -c "
import sys, time
from pymongo import MongoClient
c = MongoClient(sys.argv[1], serverSelectionTimeoutMS=200)
for _ in range(150):
    try: c.admin.command('ping'); break
    except Exception: time.sleep(0.1)
" "$uri"
}
