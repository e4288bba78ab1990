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
# face backend). Its declared dependencies drag in jax and opencv-contrib, so install.py (also what
# ComfyUI-Manager runs) installs it without them and adds the few it really imports.
python install.py

# split-voices reads the GE2E speaker-encoder weights that ship in the Resemblyzer wheel; its
# webrtcvad dependency (a C build) is not used, so install it without dependencies.
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('resemblyzer') is None)" 2>/dev/null \
  || python -m pip install -q --no-deps resemblyzer
# split-voices --separate MODEL builds Asteroid separation models (optional for users, tested here);
# its declared dependencies (torchaudio, pytorch-lightning) are not needed, and torchaudio would pull
# in another torch build, so install it without them.
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('asteroid') is None)" 2>/dev/null \
  || python -m pip install -q --no-deps "asteroid==0.7.0" "asteroid-filterbanks>=0.4"

# System programs, through apt when missing: espeak-ng synthesises the real speech used by the demo
# and the tests; chromium is the real browser the ComfyUI frontend test drives (through playwright).
apt_install() {  # apt_install <program> <package> <what it is for>
  command -v "$1" >/dev/null 2>&1 && return 0
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "setup: please install $2 (apt-get install $2) for $3" >&2
      return 0
    }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$2" >/dev/null
}
apt_install espeak-ng espeak-ng "the demo and tests"
apt_install chromium chromium "the browser test of the ComfyUI frontend"
echo "setup: done ($(python -c 'import torch; print("torch", torch.__version__)'))"
