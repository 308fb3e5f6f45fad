#!/usr/bin/env bash
# Export a training run to a model folder (<name>.onnx + model.json, see docs/model-format.md):
#   ./export.sh RUN_DIR [RUN_DIR ...] [--out model] [more options of `python -m training export`]
# A thin wrapper: every argument goes to `python -m training export` in the project's .venv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON="$ROOT/.venv/bin/python"

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    echo "Usage: ./export.sh RUN_DIR [RUN_DIR ...] [--out model] [options of 'python -m training export']"
    if [ -x "$PYTHON" ]; then
        echo
        PYTHONPATH="$ROOT" "$PYTHON" -m training export --help || true
    fi
    [ $# -gt 0 ] && exit 0 || exit 2
fi
[ -x "$PYTHON" ] || { echo "export: $PYTHON not found: run ./setup.sh first" >&2; exit 1; }
# PYTHONPATH instead of cd: relative paths in the arguments stay relative to the caller's folder.
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m training export "$@"
