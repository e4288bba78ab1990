#!/usr/bin/env bash
# The real ComfyUI the tests run against: build it once (cached), then print where it is.
#
#   eval "$(bash scripts/comfyui_env.sh)"     # exports COMFYUI_PATH and COMFYUI_PYTHON
#
# With COMFYUI_PATH already set (your own ComfyUI checkout; COMFYUI_PYTHON = its python, default
# `python3`), nothing is built: the two are checked and printed as they are.
#
# Otherwise ComfyUI 0.29.0 is unpacked from ../shared/comfyui/ComfyUI-0.29.0.tar.gz (COMFYUI_TARBALL
# overrides) into $ANYTALKER_COMFYUI_CACHE (default: .comfyui/ in the repository, git-ignored) with its
# own virtualenv there, installed the way a user installs ComfyUI and this pack:
#   1. torch as in the active environment (never another build), torchvision/torchaudio for it;
#   2. ComfyUI's requirements.txt (this brings the web frontend, comfyui-frontend-package);
#   3. this pack's requirements.txt and its install.py (what ComfyUI-Manager runs on install).
# The build is redone when the tarball or this script changes, or when the folder is missing; when only
# requirements.txt or install.py changed, step 3 runs again.
# Log: <cache>/build.log. Progress goes to stderr; stdout carries only the export lines.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"

say() { echo "comfyui_env: $*" >&2; }
die() { say "$*"; exit 1; }

if [[ -n "${COMFYUI_PATH:-}" ]]; then
  path="$(cd "$COMFYUI_PATH" 2>/dev/null && pwd)" || die "COMFYUI_PATH=$COMFYUI_PATH is not a folder"
  [[ -f "$path/main.py" && -d "$path/comfy" ]] || die "COMFYUI_PATH=$path is not a ComfyUI checkout (no main.py / comfy/)"
  python="${COMFYUI_PYTHON:-$(command -v python3)}"
  "$python" -c "import torch, aiohttp" 2>/dev/null \
    || die "COMFYUI_PYTHON=$python cannot import torch and aiohttp: point it at the python ComfyUI runs with"
  printf 'export COMFYUI_PATH=%q\nexport COMFYUI_PYTHON=%q\n' "$path" "$python"
  exit 0
fi

TARBALL="${COMFYUI_TARBALL:-$REPO/../shared/comfyui/ComfyUI-0.29.0.tar.gz}"
CACHE="${ANYTALKER_COMFYUI_CACHE:-$REPO/.comfyui}"
BASE_PYTHON="${PYTHON:-$(command -v python)}"
[[ -f "$TARBALL" ]] || die "no ComfyUI source at $TARBALL (set COMFYUI_TARBALL, or COMFYUI_PATH to your own ComfyUI)"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"

# what the venv is built from (a change rebuilds everything), and what installs the pack (a change
# re-runs step 3 only)
stamp="$( (sha256sum "$TARBALL" | cut -d' ' -f1; sha256sum "$0" | cut -d' ' -f1) | sha256sum | cut -d' ' -f1)"
pack_stamp="$(cat "$REPO/requirements.txt" "$REPO/install.py" | sha256sum | cut -d' ' -f1)"
export_lines() { printf 'export COMFYUI_PATH=%q\nexport COMFYUI_PYTHON=%q\n' "$CACHE/ComfyUI" "$CACHE/venv/bin/python"; }

exec 9>"$CACHE/.lock"
flock 9  # one build at a time; others wait and then find it ready
run() { "$@" >>"$CACHE/build.log" 2>&1 || { tail -40 "$CACHE/build.log" >&2; die "failed: $*"; }; }
install_pack() {  # 3. this pack, as ComfyUI-Manager installs it: requirements.txt, then install.py
  run "$CACHE/venv/bin/python" -m pip install -q -r "$REPO/requirements.txt"
  run "$CACHE/venv/bin/python" "$REPO/install.py"
  "$CACHE/venv/bin/python" -c "import comfyui_frontend_package, av, aiohttp, mediapipe" >>"$CACHE/build.log" 2>&1 \
    || { tail -20 "$CACHE/build.log" >&2; die "the ComfyUI venv misses a module"; }
  echo "$pack_stamp" >"$CACHE/.pack_stamp"
}
if [[ "$(cat "$CACHE/.stamp" 2>/dev/null)" == "$stamp" && -x "$CACHE/venv/bin/python" && -f "$CACHE/ComfyUI/main.py" ]]; then
  if [[ "$(cat "$CACHE/.pack_stamp" 2>/dev/null)" != "$pack_stamp" ]]; then
    say "requirements.txt or install.py changed: installing the pack into $CACHE/venv again"
    install_pack
  fi
  export_lines
  exit 0
fi

say "building the ComfyUI test environment in $CACHE (first run: a few minutes; log: $CACHE/build.log)"
started=$SECONDS
rm -rf "$CACHE/ComfyUI" "$CACHE/venv" "$CACHE/.stamp" "$CACHE/.pack_stamp"
: >"$CACHE/build.log"

run tar -xzf "$TARBALL" -C "$CACHE"
[[ -f "$CACHE/ComfyUI/main.py" ]] || die "$TARBALL did not unpack to ComfyUI/"

torch_version="$("$BASE_PYTHON" -c 'import torch; print(torch.__version__)')" \
  || die "no torch in $BASE_PYTHON (run scripts/setup.sh first)"
run "$BASE_PYTHON" -m venv "$CACHE/venv"
PY="$CACHE/venv/bin/python"
run "$PY" -m pip install -q --upgrade pip
# 1. the same torch build as the project's environment (a CPU, CUDA or ROCm build is kept as it is)
run "$PY" -m pip install -q "torch==${torch_version%%+*}"
"$PY" -c "import torch, sys; sys.exit(torch.__version__ != '$torch_version')" \
  || say "note: the test venv got torch $("$PY" -c 'import torch; print(torch.__version__)'), the project has $torch_version"
# 2. ComfyUI's own requirements (its web frontend included), without the torch lines: torch stays as
#    installed above, torchvision/torchaudio follow with --no-deps so that they never replace it
grep -v -E '^(torch|torchvision|torchaudio)([<>=!~ ]|$)' "$CACHE/ComfyUI/requirements.txt" >"$CACHE/requirements-comfyui.txt"
run "$PY" -m pip install -q -r "$CACHE/requirements-comfyui.txt"
tv_ta="$("$PY" - <<'EOF'
import torch
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
# torchvision 0.(minor+15) is released with each torch 2.(minor); torchaudio's releases lag behind
# torch's since 2.9, so: the newest torchaudio not newer than torch.
print(f"torchvision==0.{minor + 15}.* torchaudio<=2.{minor}")
EOF
)"
# shellcheck disable=SC2086
run "$PY" -m pip install -q --no-deps $tv_ta
# ComfyUI imports both at start; beside a CPU torch wheel their compiled parts may not load
# (torchvision: "operator torchvision::nms does not exist"). Fall back to their pure-Python parts,
# in this throw-away venv only (see docs/comfyui.md, "Tests").
if ! "$PY" -c "import torchvision, torchaudio" >>"$CACHE/build.log" 2>&1; then
  say "torchvision/torchaudio compiled parts do not load beside torch $torch_version: using their pure-Python parts"
  run "$PY" "$REPO/scripts/comfyui_env_vision_fallback.py"
  "$PY" -c "import torchvision, torchaudio" >>"$CACHE/build.log" 2>&1 \
    || { tail -20 "$CACHE/build.log" >&2; die "torchvision/torchaudio still do not import"; }
fi
install_pack
echo "$stamp" >"$CACHE/.stamp"
say "ready in $((SECONDS - started)) s"
export_lines
