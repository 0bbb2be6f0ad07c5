# Shared by scripts that drive the gateway with the shared benchmark's data (sourced): the bench
# upstream, the 1,000 generated tenants and the rendered gateway.toml that one earlier run of
# ../shared/bench/run.sh left in $BENCH_WORK.
B=${BENCH_WORK:-/tmp/tenantgate-bench}
BENCH=${BENCH_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/../shared/bench}
UPSTREAM="$B/upstream-target/release/bench-upstream"
[ -x "$UPSTREAM" ] && [ -f "$B/out/run/gateway.toml" ] || { echo "run $BENCH/run.sh once first" >&2; exit 1; }
