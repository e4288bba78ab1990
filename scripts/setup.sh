#!/usr/bin/env bash
# Install ComfyUI-AnyTalker and everything its CLI, demo and tests need into ./.venv
# (or into the virtualenv that is already active). Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -x .venv/bin/python ]] || "${PYTHON:-python3}" -m venv .venv
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
python -m pip install -q --upgrade pip

# torch is never pinned for users: an installed build (CUDA, ROCm, CPU) is kept as it is.
# On a machine without one, TORCH_SPEC chooses what to install (default: the 2.13.0 release).
python -c "import torch" 2>/dev/null || python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"

python -m pip install -q -e ".[test,train,eval,demo]"

# mediapipe 0.10.21 ships its face-detection and face-mesh models inside the wheel (the offline
# face backend). Its declared dependencies drag in jax and opencv-contrib, so install it without
# them and add the few it really imports.
python -c "import mediapipe" 2>/dev/null || {
  python -m pip install -q --no-deps "mediapipe==0.10.21"
  python -m pip install -q absl-py attrs flatbuffers "protobuf<5"
}

# split-voices reads the GE2E speaker-encoder weights that ship in the Resemblyzer wheel; its
# webrtcvad dependency (a C build) is not used, so install it without dependencies.
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('resemblyzer') is None)" 2>/dev/null \
  || python -m pip install -q --no-deps resemblyzer

# espeak-ng synthesises the real speech used by the demo and the tests.
if ! command -v espeak-ng >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo apt-get install -y -qq espeak-ng >/dev/null
  else
    echo "setup: please install espeak-ng (apt-get install espeak-ng) for the demo and tests" >&2
  fi
fi
echo "setup: done ($(python -c 'import torch; print("torch", torch.__version__)'))"
