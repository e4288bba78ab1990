#!/usr/bin/env bash
# Install everything (scripts/setup.sh), build the ComfyUI test environment (scripts/comfyui_env.sh,
# cached in .comfyui/) and run the whole test suite. Extra arguments go to pytest.
# CI=true: a missing ComfyUI or browser fails the run instead of skipping its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[[ -n "${VIRTUAL_ENV:-}" ]] || source .venv/bin/activate
if exports="$(bash scripts/comfyui_env.sh)"; then
  eval "$exports"
  echo "test: ComfyUI $COMFYUI_PATH (python $COMFYUI_PYTHON)"
elif [[ "${CI:-}" =~ ^(1|true|yes)$ ]]; then
  echo "test: the ComfyUI test environment could not be built (see above)" >&2
  exit 1
else
  echo "test: no ComfyUI test environment (see above): the real-ComfyUI tests will be skipped" >&2
fi
python -m pytest -q "$@"
