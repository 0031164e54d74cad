#!/usr/bin/env bash
# Set up everything wsfuse needs on a Debian 12 machine, idempotently:
# system packages (FUSE 3 and what pyfuse3 needs to build), a virtualenv in .venv,
# and the package itself with its development extra (test servers, linters, type checker).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "wsfuse setup: missing system packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "wsfuse setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# `--with-test-tools` (scripts/check.sh): the tools the write-path tests drive through a mount,
# so those tests run instead of skipping on a fresh machine. Optional: without root, the tests
# that need a missing tool skip and say which.
if [ "${1:-}" = "--with-test-tools" ]; then
    tools=()
    for t in rsync git tar; do
        command -v "$t" >/dev/null 2>&1 || tools+=("$t")
    done
    if ((${#tools[@]})); then
        if [ "$(id -u)" -eq 0 ]; then
            echo "wsfuse setup: installing test tools ${tools[*]}"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tools[@]}" >/dev/null
        else
            echo "wsfuse setup: test tools ${tools[*]} missing (not root): their tests will skip" >&2
        fi
    fi
fi

# Debian's interpreter: python3-dev above provides its headers, which pyfuse3 builds against.
PY=${WSFUSE_PYTHON:-/usr/bin/python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.wsfuse-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ packaging/pyfuse3/build.py -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # pyfuse3 from its sdist with the GIL released around read replies (the script says why);
    # the package's own install then finds it in place.
    .venv/bin/python packaging/pyfuse3/build.py
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
