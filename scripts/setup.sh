#!/usr/bin/env bash
# Set up softlabels in ./.venv: torch 2.13.0 (CPU wheel, pinned so pip never resolves a multi-GB CUDA
# build), the package with its dev extras, and Fashion-MNIST from Debian when missing and apt is usable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
fi
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${SOFTLABELS_DATA:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
      || echo "note: could not apt-get install dataset-fashion-mnist; use --root or SOFTLABELS_DATA" >&2
  else
    echo "note: Fashion-MNIST not found; run 'sudo apt-get install dataset-fashion-mnist' or set SOFTLABELS_DATA" >&2
  fi
fi
echo "softlabels is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
