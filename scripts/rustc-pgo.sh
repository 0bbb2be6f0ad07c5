#!/usr/bin/env bash
# cargo's rustc wrapper (set in .cargo/config.toml): optimised builds (`opt-level=3`, i.e.
# `cargo build --release`) get the recorded profile pgo/tenantgate.profdata
# (profile-guided optimisation), when this rustc's LLVM is the one that wrote the profile.
# Everything else — debug builds, tests, clippy, build scripts, another LLVM, or
# TENANTGATE_PGO=off — runs rustc exactly as cargo asked. Record a new profile with
# scripts/pgo-profile.sh after large changes to the request path (a stale profile only
# leaves the changed functions unguided).
set -euo pipefail
profile="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/pgo/tenantgate.profdata"
llvm_of_profile=22 # the LLVM major version of the llvm-profdata that merged the profile
wants() {
  [ "${TENANTGATE_PGO:-on}" != off ] && [ -f "$profile" ] || return 1
  local arg prev="" optimised=""
  for arg in "$@"; do
    case "$arg" in *profile-generate* | *profile-use*) return 1 ;; esac
    [ "$prev" = -C ] && [ "$arg" = opt-level=3 ] && optimised=1
    prev=$arg
  done
  [ -n "$optimised" ] || return 1
  local version
  version=$("$1" -vV 2>/dev/null) || return 1
  [[ $'\n'$version == *$'\n'"LLVM version: $llvm_of_profile."* ]]
}
if wants "$@"; then
  exec "$@" -Cprofile-use="$profile"
fi
exec "$@"
