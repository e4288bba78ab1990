"""Separate text and audio guidance as a ComfyUI GUIDER (for SamplerCustomAdvanced).

Three branches per step, as the core's :class:`anytalker_core.sampling.Guidance`:
``cond`` (prompt + audio), ``text_only`` (prompt + zeroed audio) and ``uncond`` (negative prompt + zeroed
audio), combined as ``uncond + s_t (text_only - uncond) + s_a (cond - text_only)``. ComfyUI's model returns
the denoised latent rather than the velocity; the combination's weights sum to 1, so combining either gives
the same result. Branches with weight 0 are not evaluated (text 1.0 skips ``uncond``; equal scales skip
``text_only``).
"""

from __future__ import annotations

import comfy.model_patcher
import comfy.samplers

from anytalker_core.sampling import COND, TEXT_ONLY, UNCOND, Guidance

from .patches import ZERO_AUDIO

#: branch order in the one batched model call; ``negative`` second, as ComfyUI's cond_or_uncond expects
ORDER = (COND, UNCOND, TEXT_ONLY)
_CONDS = {COND: "positive", UNCOND: "negative", TEXT_ONLY: "text_only"}


class AnyTalkerGuider(comfy.samplers.CFGGuider):
    """``CFGGuider`` with AnyTalker's separate text/audio scales."""

    def set_conds(self, positive, negative):
        # text_only is the positive prompt again, converted separately so that its entries get own uuids
        self.inner_set_conds({"positive": positive, "negative": negative, "text_only": positive})

    def set_scales(self, text_scale: float, audio_scale: float) -> None:
        self.guidance = Guidance(text_scale=text_scale, audio_scale=audio_scale)
        self.cfg = text_scale

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
        branches = self.guidance.branches
        conds = [self.conds.get(_CONDS[b]) if b in branches else None for b in ORDER]
        options = comfy.model_patcher.create_model_options_clone(model_options)
        silent = {c["uuid"] for c in self.conds.get("text_only", []) if "uuid" in c}
        options.setdefault("transformer_options", {})[ZERO_AUDIO] = silent
        out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, options)
        return self.guidance.combine({b: out[i] for i, b in enumerate(ORDER) if b in branches})
