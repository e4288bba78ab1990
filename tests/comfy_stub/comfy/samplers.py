"""Stand-in of ``comfy.samplers.KSampler``'s sampler and scheduler names (what node schemas offer).

The names are ComfyUI's own, recorded from ComfyUI 0.29.0 into ``../golden/comfyui.json`` by
``scripts/record_comfy_stub_golden.py`` (the real-ComfyUI suite checks the file against the live one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

_GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "golden" / "comfyui.json").read_text())


class KSampler:
    SAMPLERS: ClassVar[list[str]] = list(_GOLDEN["samplers.KSampler"]["SAMPLERS"])
    SCHEDULERS: ClassVar[list[str]] = list(_GOLDEN["samplers.KSampler"]["SCHEDULERS"])
