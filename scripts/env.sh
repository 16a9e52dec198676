# Sourced by the other scripts: the pinned uv, and `sync` to install from uv.lock.
#   sync --extra dev --extra uvloop   # .venv/ exactly as the lock says, with those extras
# The toolchain and every test dependency come from uv.lock (never resolved
# afresh), so an upstream release cannot change what CI runs; pyproject.toml
# keeps open ranges for users. ./scripts/lock upgrades the lock.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "Python 3.11+ is required (PYTHON=$PYTHON)" >&2; exit 1; }
UV_VERSION=0.13.10   # uv itself is pinned too: the lock's format and resolution are uv's
UV=.venv-uv/bin/uv
if [ ! -x "$UV" ] || [ "$("$UV" --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    rm -rf .venv-uv
    "$PYTHON" -m venv .venv-uv
    .venv-uv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
# Never download a Python build (only the package index is reachable): use $PYTHON.
export UV_PYTHON_DOWNLOADS=never
PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')
sync() {
    "$UV" sync --quiet --frozen --python "$PYTHON" "$@"
}
