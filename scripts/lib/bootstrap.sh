# Sourced by scripts/test and scripts/demo: installs what they need, idempotently and cached.
#
# - Python dependencies go into a virtualenv under $KEYROTOR_CACHE keyed by pyproject.toml's hash,
#   so every checkout on the machine shares it; this checkout's package is used via PYTHONPATH.
# - The control-plane binaries (kube-apiserver, etcd, kubectl) are built from Go modules once per
#   change of tests/envtest/go.mod and put on PATH.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export KEYROTOR_CACHE="${KEYROTOR_CACHE:-$HOME/.cache/keyrotor}"
mkdir -p "$KEYROTOR_CACHE"

log() { printf '\033[1m[keyrotor]\033[0m %s\n' "$*" >&2; }

python_bin="$(command -v python3.11 || command -v python3)"
"$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { log "Python 3.11+ is required (found $("$python_bin" --version))"; exit 1; }

deps_hash="$(cat "$REPO/pyproject.toml" | sha256sum | cut -c1-16)"
VENV="$KEYROTOR_CACHE/venv-$deps_hash"
# One creator at a time per machine (two checkouts or two commands at once): the others wait.
exec {venv_lock}>"$KEYROTOR_CACHE/.venv.lock"
flock "$venv_lock"
if [ ! -f "$VENV/.complete" ]; then
  log "creating Python environment in $VENV (cached after the first run) ..."
  rm -rf "$VENV"
  "$python_bin" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  # Install the dependencies declared in pyproject.toml (base and dev), not the package itself.
  "$VENV/bin/python" - "$REPO/pyproject.toml" > "$VENV/requirements.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["dev"]))
PY
  "$VENV/bin/pip" install --quiet -r "$VENV/requirements.txt"
  touch "$VENV/.complete"
fi
flock -u "$venv_lock"
PY="$VENV/bin/python"
export PYTHONPATH="$REPO/operator:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$VENV/bin:$PATH"

# Debian packages for the real servers the tests use: SoftHSM2 (PKCS#11), PostgreSQL, Prometheus;
# podman and mmdebstrap build the operator's image with no registry (keyrotor.testing.image).
apt_packages=(softhsm2 postgresql prometheus podman mmdebstrap)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]} ..."
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
  log "Go is required to build the local control plane (apt-get install golang-go, or go.dev)"
  exit 1
fi
ENVTEST_BIN="$("$PY" -m keyrotor.testing.toolchain)"
export KEYROTOR_ENVTEST_BIN="$ENVTEST_BIN"
export PATH="$ENVTEST_BIN:$PATH"
if [ "${KEYROTOR_NEEDS_VAULT:-1}" = 1 ]; then
  KEYROTOR_VAULT_BIN="$("$PY" -m keyrotor.testing.toolchain vault)"
  export KEYROTOR_VAULT_BIN
fi
if [ "${KEYROTOR_NEEDS_HELM:-1}" = 1 ]; then
  # helm for the chart tests (tests/helm), built once per change of tests/helm/go.mod.
  KEYROTOR_HELM_BIN="$("$PY" -m keyrotor.testing.toolchain helm)"
  export KEYROTOR_HELM_BIN
fi
