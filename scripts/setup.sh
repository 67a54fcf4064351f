#!/usr/bin/env bash
# Set up everything `make demo` and `make test` need, skipping what is present:
# Debian packages (apt-get update once, only when something is missing) and a
# virtual environment in .venv with the package installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="flite bible-kjv"
missing=""
for pkg in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if ! command -v apt-get >/dev/null; then
    echo "warning: Debian packages missing ($missing) and no apt-get; the built-in corpus needs them" >&2
  else
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON="$cand"; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "error: Python 3.11 is required (torch==2.13.0 CPU wheel)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.installed
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch is pinned (==2.13.0) in pyproject.toml so pip takes the CPU wheel, never a CUDA build.
  .venv/bin/python -m pip install -q -e '.[dev]'
  # s3prl, for the test of the s3prl upstream contract against its own Featurizer. It
  # declares torchaudio, which has no build for torch 2.13 (pip would replace torch), and
  # the module the test uses (s3prl.upstream.interfaces) imports only torch and numpy.
  .venv/bin/python -m pip install -q --no-deps 's3prl==0.4.18'
  echo "$want" > "$stamp"
fi
