#!/usr/bin/env bash
# The whole test suite: unit tests, end-to-end tests over real sockets on 127.0.0.1:0, the
# CLI/binary tests, the MongoDB store against a real MongoDB-wire server, and the validation of
# the deployment files (scripts/validate-deploy.sh), the OTLP export (built with
# `--features otel`), the browser demo in headless Chromium, and the differential framing test
# against nginx (scripts/differential.py).
#
# The MongoDB tests use smongo 1.2.8 from PyPI (see MONGODB_IN_TESTS in the README): installed
# into .venv when missing (the first install compiles it: about 6 minutes on 2 cores; pip keeps
# the wheel, later installs take seconds), started on a free port with a fresh data directory,
# waited for with a real ping, and stopped by PID when the tests end, pass or fail. A missing or
# broken test server fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser test drives Debian's Chromium through chromedriver (tests/browser.rs).
if [ -z "${CHROMIUM:-}" ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
    echo "test.sh: installing Debian's chromium and chromium-driver for the browser test" >&2
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# The differential framing test runs the same bytes through Debian's nginx (the reference).
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    echo "test.sh: installing Debian's nginx-light for the differential framing test" >&2
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light >/dev/null
fi

venv=${TENANTGATE_TEST_VENV:-$PWD/.venv}
python="$venv/bin/python"
if ! "$python" -c 'import smongo, pymongo' 2>/dev/null; then
    echo "test.sh: installing the MongoDB-wire test server (smongo 1.2.8) into $venv" >&2
    python3 -m venv "$venv"
    "$python" -m pip install --quiet --disable-pip-version-check smongo==1.2.8 'pymongo>=4,<5'
fi
# h11: the strict HTTP/1.1 parser of the differential test's recording backends.
if ! "$python" -c 'import h11' 2>/dev/null; then
    "$python" -m pip install --quiet --disable-pip-version-check 'h11>=0.16,<0.17'
fi

data=$(mktemp -d)
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$python" -m smongo.wire --host 127.0.0.1 --port "$port" --db-path "$data/db" >"$data/server.log" 2>&1 &
pid=$!
stop() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$data"
}
trap stop EXIT

# serverMonitoringMode=poll: smongo answers the driver's awaitable (streaming) hello at once
# instead of holding it, which makes the driver ask again in a tight loop; MongoDB holds it.
uri="mongodb://127.0.0.1:$port/?directConnection=true&serverMonitoringMode=poll"
if ! "$python" - "$uri" <<'EOF'; then
import sys, time
from pymongo import MongoClient
client = MongoClient(sys.argv[1], serverSelectionTimeoutMS=200)
deadline = time.time() + 30
while True:
    try:
        client.admin.command("ping")
        break
    except Exception as e:
        if time.time() > deadline:
            sys.exit(f"no ping reply within 30 s: {e}")
        time.sleep(0.1)
EOF
    echo "test.sh: the MongoDB-wire test server did not start; its log:" >&2
    cat "$data/server.log" >&2
    exit 1
fi

export TEST_MONGODB_URI="$uri"
export TEST_SMONGO_PYTHON="$python"
cargo test --locked --all-targets --features otel "$@"
# The differential framing test: the same bytes through nginx and through the gateway just built.
if [ $# -eq 0 ]; then "$python" scripts/differential.py target/debug/tenantgate; fi
# The deployment files, as far as they can be checked without a Docker engine or a cluster.
if [ $# -eq 0 ]; then bash scripts/validate-deploy.sh; fi
