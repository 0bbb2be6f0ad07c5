#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for SECS seconds each (default 5), from its
# committed seed corpus (fuzz/corpus/<target>/) plus a working corpus in fuzz/work/ that keeps
# what earlier runs found (not committed). Coverage-guided with `cargo +nightly fuzz` (cargo-fuzz
# is installed when missing); without a nightly toolchain, the targets are built with the
# stable one (no coverage instrumentation) and each replays its seeds, so they keep building and
# their invariants keep holding on the corpus. A crash or an invariant violation fails the run
# and leaves the input in fuzz/artifacts/<target>/.
#   SECS=600 TARGETS="request_head server_path" bash scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${SECS:-5}
targets=${TARGETS:-"request_head chunked_body response_head server_path config_file tenant_document origins"}
mkdir -p logs
if cargo +nightly --version >/dev/null 2>&1; then
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        cargo install --locked cargo-fuzz
    fi
    for t in $targets; do
        mkdir -p "work/$t"
        echo "fuzz.sh: $t for ${secs}s" >&2
        status=0
        cargo +nightly fuzz run -O "$t" "work/$t" "corpus/$t" -- \
            -max_total_time="$secs" -print_final_stats=1 -close_fd_mask=1 >"logs/$t.log" 2>&1 || status=$?
        grep -E "^(Done|stat::(number_of_executed_units|new_units_added)|SUMMARY|thread)" "logs/$t.log" || true
        if [ "$status" -ne 0 ]; then
            tail -40 "logs/$t.log" >&2
            echo "fuzz.sh: $t failed; see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
            exit 1
        fi
    done
else
    echo "fuzz.sh: no nightly toolchain; replaying the seed corpora with a stable build" >&2
    cargo build --release --bins
    for t in $targets; do
        "target/release/$t" -runs=0 "corpus/$t"
    done
fi
