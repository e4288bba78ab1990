"""Long clips: denoise, decode, colour-match and write a clip window by window, resumably.

(Formerly chained windows sharing one frame; ``overlap_frames=1`` with ``clip_reference="window"`` and
``colour_match=False`` is close to that chain, with the shared frame pinned instead of re-generated.)

The frame arithmetic is :mod:`.window_plan`; this module runs it on any *stages* object that satisfies
:class:`WindowStages` (the standalone pipeline does; a native ComfyUI route can wrap its own models).

How window ``k ≥ 1`` is conditioned on window ``k−1`` (``overlap_mode``):

``"latent"`` (default, every AFCA variant)
    The window's first ``M`` frames are the previous window's (colour-matched) last ``M`` frames. They are
    VAE-encoded (``M = 4j+1`` frames → the window's first ``j+1`` latent frames, exactly, because the VAE
    is causal) and **pinned** during sampling: at every step the model's velocity on those latent frames is
    replaced by the one that predicts them exactly (``v = (x − x0) / σ``), so every solver (UniPC, DPM++,
    Euler) lands on them and the rest of the window is denoised attending to real motion, as InfiniteTalk
    does by re-inserting its motion latents every step. The I2V conditioning ``y`` stays what the model was
    trained on: the window's first frame + zeros, with 1 in the mask channels of latent frame 0 and the
    summed face masks after it. Default because it changes nothing the model was trained to read.
``"y"``
    The motion frames are known frames in the I2V conditioning instead: ``y``'s latent channels are the
    encoding of ``[M motion frames; zeros]`` and its mask channels are 1 on their latent frames. Plain Wan
    I2V reads ``y`` this way, but AnyTalker's mask channels carry the face masks after frame 0, so this
    is outside what the released checkpoints saw; offered for experiments and fine-tuned models.

Drift control
    The identity reference stays the start image's: every window uses the start image's face tokens and
    token masks, and (``clip_reference="start"``, default) its whole-image CLIP tokens; ``"window"``
    re-encodes them from the window's first frame. Each window's decoded frames are colour-matched to the
    start image (:mod:`.colour`, ``colour_match=True`` by default) *before* they become the next window's
    motion frames, so the correction does not accumulate drift. ``reanchor_every = P > 0`` re-anchors every
    ``P``-th window: its ``y`` first frame (and CLIP tokens) are the start image again while its motion
    frames stay pinned after latent frame 0, and the overlap cross-fade hides the change.

Audio: the timeline's features stay on the CPU once per frame (:class:`~..audio.windowed.WindowedFeatures`,
a fifth of the windowed stack); each window's windowed span is built and moved to the device for that
window only. Memory is one window's worth: only each window's conditioning is VAE-encoded, each
window is decoded on its own, and frames go to ``sink`` as soon as they are final.

Resuming: with a :class:`~.window_store.WindowStore`, each finished window's emitted frames and tail are
persisted atomically; a re-run with the same inputs replays them into ``sink`` and continues after them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ..audio.windowed import WindowedFeatures
from ..errors import InputError, Interrupted
from .colour import LabStats, lab_stats, match_colour
from .host_memory import release_freed_memory
from .window_plan import (CLIP_REFERENCES, OVERLAP_MODES, LongClipOptions, Window, needs_windows, plan_windows,
                          split_window)
from .window_store import WindowStore, module_fingerprint, run_key

log = logging.getLogger(__name__)

__all__ = ["LongClipOptions", "WindowedCondition", "WindowedFeatures", "as_windowed", "window_inputs", "KnownLatents", "WindowStages",
           "pin_known_latents", "run_key_for", "run_windows", "OVERLAP_MODES", "CLIP_REFERENCES"]

Sink = Callable[[np.ndarray], None]


@dataclass
class WindowedCondition:
    """The conditioning of a clip generated in windows, without anything the size of the timeline on the device.

    Attributes:
        template: the condition of one window of ``window_frames`` frames built from the start image
            (``y`` = its mask channels + the latent of start image + zeros, CLIP tokens, face tokens, masks,
            prompts, and the first window's audio).
        features: the whole timeline's windowed audio features ``[N, total_frames, 5, L, C]``, stored once
            per frame (CPU).
    """

    template: Any
    features: WindowedFeatures

    @property
    def total_frames(self) -> int:
        return self.features.num_frames

    @property
    def window_frames(self) -> int:
        return int(self.template.plan.frame_num)

    @property
    def plan(self) -> Any:
        """The whole clip's sizes."""
        return dataclasses.replace(self.template.plan, frame_num=self.total_frames)


def window_inputs(plan: Any, audio: Any, window_frames: int) -> tuple[Any, Any, bool]:
    """What to build a clip's conditioning for: ``(plan, audio, windowed)``.

    A clip longer than ``window_frames`` is conditioned for one window (the plan and audio features cut to
    ``window_frames``: only that much first frame + zeros is VAE-encoded), then wrapped in a
    :class:`WindowedCondition` with the whole ``audio.windowed``; otherwise the inputs are returned as they are.
    """
    windowed = needs_windows(plan.frame_num, window_frames)
    if not windowed:
        return plan, audio, False
    return (dataclasses.replace(plan, frame_num=window_frames),
            dataclasses.replace(audio, windowed=audio.windowed.cut(0, window_frames), frame_num=window_frames), True)


@dataclass
class KnownLatents:
    """Latent frames fixed during sampling: ``values [1, 16, n, h, w]`` for latent frames ``first .. first+n-1``."""

    values: torch.Tensor
    first: int = 0

    @property
    def frames(self) -> slice:
        return slice(self.first, self.first + int(self.values.shape[2]))


class WindowStages(Protocol):
    """What :func:`run_windows` needs (``AnyTalkerPipeline`` and :class:`.stages.SamplingModels` have it).

    ``placement``: where and in what dtype the DiT reads its conditioning; ``dit``: fingerprinted for the
    work-folder key.
    """

    placement: Any
    dit: Any

    def denoise(self, condition: Any, *, steps: int, seed: int, progress: Any = None, should_stop: Any = None,
                known: KnownLatents | None = None, **sampling: Any) -> torch.Tensor:
        """Sample the window's latent ``[1, 16, F, h, w]`` (``known``: see :func:`pin_known_latents`)."""

    def decode(self, latent: torch.Tensor) -> np.ndarray:
        """Latent → uint8 frames ``[4(F−1)+1, H, W, 3]``."""

    def encode_frames(self, frames: np.ndarray, num_frames: int) -> torch.Tensor:
        """uint8 ``[n, H, W, 3]`` at the video size → latent of ``[frames; zeros]`` (``num_frames`` frames)."""

    def encode_image_tokens(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 ``[H, W, 3]`` → whole-image CLIP tokens ``[1, 257, clip_dim]``."""


def pin_known_latents(denoise: Callable, known: KnownLatents, sigmas: torch.Tensor) -> Callable:
    """Wrap a multi-branch denoiser (:mod:`..sampling.sampler`) so that every branch predicts ``known``'s
    latent frames exactly: on those frames the velocity becomes ``(x − x0) / σ_i`` at step ``i`` (σ from
    the scheduler's ``sigmas``). Any flow solver then moves them straight to ``x0``.

    The wrapper counts its calls: the sampler calls the denoiser once per step.
    """
    state = {"step": 0}
    sl = known.frames

    def wrapped(latent: torch.Tensor, t: torch.Tensor, branches: tuple[str, ...]):
        sigma = float(sigmas[state["step"]])
        state["step"] += 1
        outputs = list(denoise(latent, t, branches))
        x0 = known.values.to(device=latent.device, dtype=torch.float32)
        velocity = (latent[:, :, sl].float() - x0) / max(sigma, 1e-6)
        for i, out in enumerate(outputs):
            out = out.clone()
            out[:, :, sl] = velocity.to(out.dtype)
            outputs[i] = out
        return outputs

    return wrapped


def _fit_frame(image: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _window_condition(template: Any, window: Window, features: WindowedFeatures, device: torch.device,
                      dtype: torch.dtype) -> Any:
    """The template (start image, window length) cut to ``window``'s length with ``window``'s audio."""
    part = template.window(0, window.length)
    lo, hi = window.audio_span
    audio = features.span(lo, hi)  # [N, hi-lo, 5, L, C], this window's only
    speakers = [dataclasses.replace(s, audio=audio[i:i + 1].to(device=device, dtype=dtype))
                for i, s in enumerate(part.speakers)]
    return dataclasses.replace(part, speakers=speakers)


def as_windowed(features: WindowedFeatures | torch.Tensor) -> WindowedFeatures:
    """:class:`WindowedFeatures` as they are; a dense windowed stack ``[N, T, 5, L, C]`` wrapped."""
    return features if isinstance(features, WindowedFeatures) else WindowedFeatures.from_dense(features)


def run_key_for(stages: WindowStages, template: Any, features: WindowedFeatures | torch.Tensor, total_frames: int,
                window_frames: int, options: LongClipOptions, steps: int, seed: int, sampling: dict) -> tuple[str, dict]:
    """The work-folder key of a run and the JSON description stored with it (``features``: as
    :func:`run_windows` takes them)."""
    features = as_windowed(features)
    settings = {"total_frames": total_frames, "window_frames": window_frames, "options": dataclasses.asdict(options),
                "steps": steps, "seed": seed, "sampling": {k: v for k, v in sampling.items()},
                "dit": module_fingerprint(stages.dit if isinstance(stages.dit, torch.nn.Module) else None),
                "size": [template.plan.height, template.plan.width]}
    tensors = [template.y, template.clip_fea, template.prompts.context, template.prompts.context_null,
               features.rows, features.index,
               *(s.face_clip for s in template.speakers), *(s.token_mask for s in template.speakers)]
    return run_key(settings, tensors), settings


def run_windows(stages: WindowStages, template: Any, features: WindowedFeatures | torch.Tensor, total_frames: int,
                window_frames: int, sink: Sink, *, options: LongClipOptions | None = None,
                steps: int, seed: int, progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None, store: WindowStore | None = None,
                **sampling: Any) -> int:
    """Generate a ``total_frames`` clip window by window into ``sink``; returns the frames written (= ``total_frames``).

    Args:
        stages: see :class:`WindowStages`.
        template: the condition of one full window (``window_frames`` frames) built from the start image
            (its ``y``, CLIP tokens, face tokens, masks, prompts); its audio is replaced per window.
        features: the whole timeline's windowed audio features ``[N, total_frames, 5, L, C]``, as
            :class:`WindowedFeatures` (``AudioConditioning.windowed``) or a dense tensor (CPU is fine).
        total_frames: clip length ``4n+1``; window_frames: ``4m+1``.
        sink: receives uint8 frame chunks ``[n, H, W, 3]`` in order; their lengths add up to ``total_frames``.
        options: :class:`LongClipOptions`.
        steps, seed: per window (window ``k`` draws its noise with ``seed + k``).
        progress: ``progress(done, total)`` over all windows × steps; should_stop: True → :class:`Interrupted`
            (checked at every step and between windows).
        store: persist/resume finished windows (:class:`~.window_store.WindowStore`).
        **sampling: the other keyword arguments of ``stages.denoise`` (shift, sampler, guidance, ...).
    """
    options = (options or LongClipOptions()).checked(window_frames)
    windows = plan_windows(total_frames, window_frames, options.overlap_frames)
    features = as_windowed(features)
    if features.num_frames != total_frames:
        raise InputError(f"audio features cover {features.num_frames} frames but the clip has {total_frames}")
    if template.plan.frame_num < windows[0].length:
        raise InputError(f"the window template has {template.plan.frame_num} frames, expected {windows[0].length}")
    plan = template.plan
    if options.colour_match and getattr(template, "start_image", None) is None:
        raise InputError("colour matching needs the start image: build the condition with build_condition, "
                         "or turn colour matching off")
    reference: LabStats | None = (lab_stats(_fit_frame(np.asarray(template.start_image), plan.height, plan.width))
                                  if options.colour_match else None)
    total = len(windows) * steps
    log.info("long video: %d frames in %d window(s) of up to %d frames, overlap %d (%s, %s), colour match %s "
             "(%s)", total_frames, len(windows), windows[0].length, options.overlap_frames, options.overlap_mode,
             options.merge, "on" if options.colour_match else "off",
             ", ".join(f"{w.start}-{w.end - 1}" for w in windows))

    written = 0
    tail: np.ndarray | None = None
    first = 0
    if store is not None:
        first = store.finished(len(windows))
        for k in range(first):
            record = store.load(k)
            if record is None:  # unreadable: redo from here
                first = k
                break
            emitted, tail = record
            sink(emitted)
            written += len(emitted)
        if first:
            log.info("resuming: windows 1-%d of %d already written (%s)", first, len(windows), store.folder)
            if progress is not None:
                progress(first * steps, total)

    for window in windows[first:]:
        if should_stop is not None and should_stop():
            raise Interrupted(f"generation stopped by request before window {window.index + 1}/{len(windows)}")
        started = time.monotonic()
        condition = _window_condition(template, window, features, stages.placement.device, stages.placement.dtype)
        known = None
        if window.index > 0:
            condition, known = _condition_on_motion(stages, condition, template, window, tail, options)
            release_freed_memory()  # the motion-frame encode's buffers, before the decode needs its own
        done = window.index * steps

        def window_progress(step: int, _steps: int, done: int = done) -> None:
            if progress is not None:
                progress(done + step, total)

        latent = stages.denoise(condition, steps=steps, seed=seed + window.index, progress=window_progress,
                                should_stop=should_stop, known=known, **sampling)
        if known is not None:  # exactly the motion latents (the solver reaches them up to rounding)
            latent = latent.clone()
            latent[:, :, known.frames] = known.values.to(latent)
        frames = stages.decode(latent)
        del latent
        if options.colour_match:
            frames = match_colour(frames, reference)  # before they become the next window's motion frames
        emitted, tail = split_window(window, frames, tail, options.merge)
        if store is not None:
            store.save(window.index, emitted, tail)
        sink(emitted)
        written += len(emitted)
        del frames, emitted, condition, known
        release_freed_memory()
        log.info("window %d/%d: frames %d-%d, seed %d, %.1f s", window.index + 1, len(windows), window.start,
                 window.end - 1, seed + window.index, time.monotonic() - started)
    if written != total_frames:
        raise RuntimeError(f"long video: wrote {written} frames, expected {total_frames}")
    return written


def _condition_on_motion(stages: WindowStages, condition: Any, template: Any, window: Window,
                         tail: np.ndarray | None, options: LongClipOptions) -> tuple[Any, KnownLatents | None]:
    """Window ``k ≥ 1``'s condition and pinned latents from the previous window's tail (its motion frames)."""
    if tail is None or len(tail) != window.overlap:
        raise RuntimeError(f"window {window.index + 1}: the previous window's {window.overlap} motion frames "
                           "are missing")
    n_known = window.known_latent_frames
    reanchor = options.reanchor_every > 0 and window.index % options.reanchor_every == 0
    mask = condition.y[:, :4]
    if options.overlap_mode == "y" and not reanchor:
        latent = stages.encode_frames(tail, window.length)             # [1, 16, F, h, w] of [motion; zeros]
        mask = mask.clone()
        mask[:, :, :n_known] = 1.0
        known = None
    else:
        motion = stages.encode_frames(tail, window.overlap)            # [1, 16, n_known, h, w], causal VAE
        if reanchor:  # y keeps the start image; motion pinned after latent frame 0
            latent = None
            known = KnownLatents(motion[:, :, 1:n_known], first=1) if n_known > 1 else None
        else:
            latent = stages.encode_frames(tail[:1], window.length)     # first frame + zeros
            known = KnownLatents(motion, first=0)
    y = condition.y if latent is None else torch.cat([mask, latent.to(condition.y)], dim=1)
    clip_fea = condition.clip_fea
    if options.clip_reference == "window" and not reanchor:
        clip_fea = stages.encode_image_tokens(tail[0]).to(condition.clip_fea)
    return dataclasses.replace(condition, y=y, clip_fea=clip_fea), known
