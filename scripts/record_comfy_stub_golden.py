"""Record the values tests/comfy_stub/ needs from a real ComfyUI into tests/comfy_stub/golden/comfyui.json.

Run with ComfyUI's python, from anywhere (the command that wrote the committed file):

    eval "$(bash scripts/comfyui_env.sh)"
    "$COMFYUI_PYTHON" scripts/record_comfy_stub_golden.py "$COMFYUI_PATH"

The stand-in never imports this project (or ComfyUI): it reads these numbers. The real-ComfyUI suite
(tests/test_comfyui_server.py) checks the file against the live ComfyUI, so it cannot drift silently.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "comfy_stub" / "golden" / "comfyui.json"


def record(comfyui: Path) -> dict:
    sys.path.insert(0, str(comfyui))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True  # comfy.samplers imports model management, which otherwise looks for CUDA
    import comfy.latent_formats
    import comfy.samplers

    wan = comfy.latent_formats.Wan21()
    commit = subprocess.run(["git", "-C", str(comfyui), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    version = (comfyui / "comfyui_version.py").read_text().split("=")[-1].strip().strip('"\'')
    return {
        "recorded_from": {"comfyui_version": version,
                          "commit": commit.stdout.strip() if commit.returncode == 0 else None,
                          "command": "\"$COMFYUI_PYTHON\" scripts/record_comfy_stub_golden.py \"$COMFYUI_PATH\""},
        "latent_formats.Wan21": {
            "latent_channels": wan.latent_channels,
            "latent_dimensions": wan.latent_dimensions,
            "scale_factor": float(wan.scale_factor),
            "latents_mean": [float(v) for v in wan.latents_mean.flatten()],
            "latents_std": [float(v) for v in wan.latents_std.flatten()],
        },
        "samplers.KSampler": {"SAMPLERS": list(comfy.samplers.KSampler.SAMPLERS),
                              "SCHEDULERS": list(comfy.samplers.KSampler.SCHEDULERS)},
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record(Path(sys.argv[1]).resolve()), indent=1) + "\n")
    print(f"wrote {OUT}")
