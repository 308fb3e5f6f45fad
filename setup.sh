#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv/ with everything needed to train,
# export, test and run process.py locally. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
# torch first and on its own: asked for by another package (timm), pip would pick the newest torch
# with several GB of CUDA libraries instead of the pinned one.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
echo "setup: ready ($(.venv/bin/python -c 'import torch, onnxruntime; print("torch", torch.__version__, "| onnxruntime", onnxruntime.__version__)'))"
