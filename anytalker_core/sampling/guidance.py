"""Classifier-free guidance for text and audio.

Three conditioning *branches* exist; the pipeline maps each to DiT inputs:

* ``"cond"``      — the prompt and every speaker's real audio;
* ``"uncond"``    — the negative prompt and zeroed audio features (the reference's null branch:
  faces, masks, CLIP image tokens and the first-frame latent ``y`` are kept);
* ``"text_only"`` — the prompt with zeroed audio (only for separate text/audio scales).

Two modes, one dataclass:

* ``Guidance(4.5)`` — the reference: one scale for text and audio together,
  ``pred = uncond + s * (cond - uncond)``; 2 model calls per step.
* ``Guidance(text_scale=s_t, audio_scale=s_a)`` — separate scales,
  ``pred = uncond + s_t * (text_only - uncond) + s_a * (cond - text_only)``; 3 model calls per step.
  With ``s_a == s_t`` it is the single-scale formula (2 calls).

A branch whose weight in the result is zero is not evaluated: scale 1.0 in single mode needs only
``cond`` (1 call); ``text_scale=1`` in dual mode skips ``uncond``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputError

COND = "cond"
UNCOND = "uncond"
TEXT_ONLY = "text_only"
BRANCHES: tuple[str, ...] = (COND, UNCOND, TEXT_ONLY)
DEFAULT_GUIDANCE_SCALE = 4.5

# The reference's default negative prompt: AnyTalker's own `wan/configs/shared_config.py`
# (`sample_neg_prompt`, commit e5490b6) replaces Wan2.1's Chinese one with this English text; the
# generation script passes no `n_prompt`, so this is what the released pipeline uses.
DEFAULT_NEGATIVE_PROMPT = (
    "This shot begins with a scene, then becomes a distorted scene with subtitles, captions, and words on "
    "the bottom, featuring an ugly, incomplete or unnatural-looking character or object with extra fingers, "
    "poorly drawn hands and face, deformed and disfigured limbs, fused fingers, three legs, deformed arms or "
    "legs, distorted body passing through objects, swapped left and right arms, swapped left and right legs, "
    "or a deformed face on the back. The mouth movements are unnatural and not synchronized with the speech; "
    "lip motion is delayed or mismatched with the voice, showing poor lip-sync accuracy, with visible "
    "imperfections or distortions in the teeth. The facial expressions are stiff, frozen, or flickering, with "
    "jittering eyes and inconsistent gaze direction. The characters' necks or heads appear twisted. The "
    "objects and background in the scene are crashed, broken, or deformed, unnaturally distorted, and "
    "changing their front and back orientation."
)

# Wan2.1's default negative prompt (`wan/configs/shared_config.py` `sample_neg_prompt` in Wan-Video/Wan2.1).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def _check_scale(label: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InputError(f"guidance: {label} must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Guidance:
    """Guidance scales. ``audio_scale=None`` is the reference's single-scale mode."""

    text_scale: float = DEFAULT_GUIDANCE_SCALE
    audio_scale: float | None = None

    def __post_init__(self) -> None:
        _check_scale("text_scale", self.text_scale)
        if self.audio_scale is not None:
            _check_scale("audio_scale", self.audio_scale)

    @property
    def separate(self) -> bool:
        """True when text and audio have different scales (the 3-branch formula)."""
        return self.audio_scale is not None and float(self.audio_scale) != float(self.text_scale)

    def weights(self) -> dict[str, float]:
        """Each branch's coefficient in the guided prediction (they sum to 1)."""
        s_t = float(self.text_scale)
        if not self.separate:
            return {COND: s_t, UNCOND: 1.0 - s_t}
        s_a = float(self.audio_scale)  # type: ignore[arg-type]
        return {COND: s_a, TEXT_ONLY: s_t - s_a, UNCOND: 1.0 - s_t}

    @property
    def branches(self) -> tuple[str, ...]:
        """The branches to evaluate each step, in the order ``cond``, ``text_only``, ``uncond``."""
        w = self.weights()
        return tuple(b for b in (COND, TEXT_ONLY, UNCOND) if w.get(b, 0.0) != 0.0)

    @property
    def calls_per_step(self) -> int:
        return len(self.branches)

    def combine(self, preds: dict[str, torch.Tensor]) -> torch.Tensor:
        """The guided prediction from the branch predictions in ``preds`` (keys: :attr:`branches`).

        Single mode uses the reference's expression ``uncond + s * (cond - uncond)`` verbatim.
        """
        missing = [b for b in self.branches if b not in preds]
        if missing:
            raise InputError(f"guidance: predictions missing for branch(es) {missing}; got {sorted(preds)}")
        branches = self.branches
        if len(branches) == 1:
            return preds[branches[0]]
        if not self.separate:
            s = float(self.text_scale)
            return preds[UNCOND] + s * (preds[COND] - preds[UNCOND])
        s_t, s_a = float(self.text_scale), float(self.audio_scale)  # type: ignore[arg-type]
        if UNCOND in branches and TEXT_ONLY in branches and COND in branches:
            text_only = preds[TEXT_ONLY]
            return preds[UNCOND] + s_t * (text_only - preds[UNCOND]) + s_a * (preds[COND] - text_only)
        # two branches left (one weight is zero): the weighted sum is the same formula
        w = self.weights()
        out = None
        for b in branches:
            term = w[b] * preds[b]
            out = term if out is None else out + term
        return out  # type: ignore[return-value]
