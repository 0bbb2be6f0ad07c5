#!/usr/bin/env bash
# The whole test suite: unit tests, end-to-end tests over real sockets on 127.0.0.1:0, and the
# CLI/binary tests. Needs only a Rust toolchain (cargo); nothing else to install or start.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --all-targets "$@"
