#!/usr/bin/env bash
# Install everything (scripts/setup.sh), then run the `anytalker` command with the given arguments,
# e.g. `bash scripts/run.sh generate --demo --out outputs/demo.mp4`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[[ -n "${VIRTUAL_ENV:-}" ]] || source .venv/bin/activate
exec anytalker "$@"
