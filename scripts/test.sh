#!/usr/bin/env bash
# Set up (idempotent), lint, and run the whole test suite, the slow Fashion-MNIST end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
