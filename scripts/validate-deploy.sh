#!/usr/bin/env bash
# Validates the deployment files as far as this machine allows (no Docker engine, no cluster):
# - deploy/kubernetes/*.yaml against the Kubernetes API schemas (kubernetes-validate, offline,
#   strict: unknown fields are errors);
# - deploy/compose.yaml with `docker-compose config` (the Compose file parser);
# - the gateway configs they carry (deploy/gateway.toml and the ConfigMap's gateway.toml) with
#   `tenantgate check`: exit 69 (database unreachable) means the config itself is valid.
# Called by scripts/test.sh after the Rust tests (it uses their debug binary).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TENANTGATE_TEST_VENV:-$PWD/.venv}
bin=${TENANTGATE_BIN:-target/debug/tenantgate}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null ||
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0' pyyaml

echo "validate-deploy: Kubernetes manifests (schema 1.30, strict)"
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.30 deploy/kubernetes/*.yaml

echo "validate-deploy: compose file"
if ! command -v docker-compose >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null
    else
        echo "validate-deploy: docker-compose is missing and cannot be installed here (needs root + apt)" >&2
        exit 1
    fi
fi
docker-compose -f deploy/compose.yaml config -q

echo "validate-deploy: gateway configs"
cfg=$(mktemp -d)
trap 'rm -rf "$cfg"' EXIT
cp deploy/gateway.toml "$cfg/compose.toml"
"$venv/bin/python" -c '
import sys, yaml
print(yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))["data"]["gateway.toml"])
' >"$cfg/configmap.toml"
for f in "$cfg"/compose.toml "$cfg"/configmap.toml; do
    code=0
    TENANTGATE_STORE_URI='mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300&connectTimeoutMS=300' \
        "$bin" check --config "$f" >"$cfg/out" 2>&1 || code=$?
    if [ "$code" != 69 ]; then
        echo "validate-deploy: $(basename "$f"): expected exit 69 (valid config, no database), got $code:" >&2
        cat "$cfg/out" >&2
        exit 1
    fi
done
echo "validate-deploy: ok"
