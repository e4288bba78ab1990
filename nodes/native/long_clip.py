"""Long clips on the native route: the core's overlapping motion-frame windows, sampled by ComfyUI.

:func:`anytalker_core.generation.windows.run_windows` is the one long-clip loop (the window plan of
:mod:`~anytalker_core.generation.window_plan`: spans, overlap, each window's audio span, frames blended or
dropped so the clip has exactly the audio's frame count; colour matching to the start image; resume from
the windows already written). It drives any object with the ``WindowStages`` methods; :class:`NativeStages`
is that object for ComfyUI's own Wan MODEL:

* ``denoise`` turns a window's core ``Conditioning`` into native MODEL / CONDITIONING
  (:func:`.conditioning.to_native`) and samples it with ComfyUI's sampler machinery (``CFGGuider`` — or
  :class:`.guider.AnyTalkerGuider` for separate text/audio scales — with ``comfy.samplers.sampler_object``
  and ``calculate_sigmas``, as KSampler / SamplerCustomAdvanced do). The previous window's motion
  latents are pinned the way ComfyUI pins known latents in inpainting: the LATENT's ``noise_mask``
  (``denoise_mask``, 0 on the known latent frames) with the known latents as ``latent_image``. ComfyUI's
  ``KSamplerX0Inpaint`` then feeds the model ``σ·noise + (1−σ)·x0`` on those frames and replaces its
  prediction there by ``x0`` at every step — what the core's ``pin_known_latents`` does with the velocity.
* ``decode`` / ``encode_frames`` / ``encode_image_tokens``: ComfyUI's VAE and CLIP vision through the
  bridge adapters (the core's stage functions, as the pack's Long Sampler uses them).

Progress: one ComfyUI progress bar over all windows × steps, with the sampler's latent previews.
Cancel: ComfyUI's interrupt, checked at every step (ComfyUI's own layers check it too) and between windows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from anytalker_core.generation.stages import Placement, SamplingModels

log = logging.getLogger(__name__)


@dataclass
class NativeSampling:
    """KSampler's settings for every window: ``sampler_name``, ``scheduler``, ``cfg`` and — when above 0 and
    different from ``cfg`` — a separate ``audio_cfg`` (AnyTalker Text/Audio Guider's three branches)."""

    sampler_name: str
    scheduler: str
    cfg: float
    audio_cfg: float = 0.0

    @property
    def separate(self) -> bool:
        return self.audio_cfg > 0 and self.audio_cfg != self.cfg


def known_latent_inputs(known: Any, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(latent_image, denoise_mask)`` for ComfyUI's sampler from the core's ``KnownLatents``.

    ``latent_image``: raw-VAE-scale latent ``shape`` (``[1, 16, F, h, w]``), zero except the known latent
    frames (ComfyUI's ``process_latent_in`` normalises it on the way in); ``denoise_mask`` ``[1, 1, F, h, w]``:
    0 on the known frames (kept), 1 elsewhere (denoised) — or ``None`` when nothing is known.
    """
    import comfy.latent_formats

    latent = torch.zeros(shape)
    if known is None:
        return latent, None
    frames = known.frames
    latent[:, :, frames] = comfy.latent_formats.Wan21().process_out(known.values.detach().float().cpu())
    mask = torch.ones(1, 1, *shape[2:])
    mask[:, :, frames] = 0.0
    return latent, mask


@dataclass
class NativeStages(SamplingModels):
    """The ``WindowStages`` of the native route (see the module docstring).

    ``dit`` is not a module here (ComfyUI owns the model): :func:`model_fingerprint` stands for it in the
    resume key. ``preview`` holds the last step's latent preview for the progress bar.
    """

    model: Any = None
    positive: list = field(default_factory=list)
    negative: list = field(default_factory=list)
    sampling: NativeSampling | None = None
    sigmas: torch.Tensor | None = None
    preview: Any = None

    def denoise(self, conditioning: Any, *, steps: int, seed: int, progress: Callable | None = None,
                should_stop: Callable | None = None, known: Any = None) -> torch.Tensor:
        """Sample one window with ComfyUI's sampler; the normalised latent ``[1, 16, F, h, w]`` (float32, CPU)."""
        import comfy.latent_formats
        import comfy.sample
        import comfy.samplers
        import comfy.utils
        import latent_preview

        from .conditioning import to_native
        from .guider import AnyTalkerGuider

        patched, positive, negative, latent = to_native(self.model, conditioning, self.positive, self.negative)
        s = self.sampling
        if s.separate:
            guider = AnyTalkerGuider(patched)
            guider.set_conds(positive, negative)
            guider.set_scales(s.cfg, s.audio_cfg)
        else:
            guider = comfy.samplers.CFGGuider(patched)
            guider.set_conds(positive, negative)
            guider.set_cfg(s.cfg)
        if len(self.sigmas) - 1 != steps:
            raise RuntimeError(f"{len(self.sigmas) - 1} sigmas for {steps} steps")
        latent_image, mask = known_latent_inputs(known, tuple(latent["samples"].shape))
        noise = comfy.sample.prepare_noise(latent_image, seed)
        previewer = latent_preview.get_previewer(patched.load_device, patched.model.latent_format)

        def callback(step: int, x0: torch.Tensor, _x: torch.Tensor, total_steps: int) -> None:
            if should_stop is not None:
                should_stop()
            if previewer is not None:
                self.preview = previewer.decode_latent_to_preview_image("JPEG", x0)
            if progress is not None:
                progress(step + 1, total_steps)

        samples = guider.sample(noise, latent_image, comfy.samplers.sampler_object(s.sampler_name), self.sigmas,
                                denoise_mask=mask, callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
                                seed=seed)
        return comfy.latent_formats.Wan21().process_in(samples.detach().float().cpu())


def _hash_value(h: hashlib._Hash, value: Any, depth: int = 0) -> None:
    """Feed a model patch (tensors, LoRA adapters, tuples of them) into ``h`` (shapes and leading values)."""
    if depth > 6:
        h.update(type(value).__name__.encode())
    elif isinstance(value, torch.Tensor):
        flat = value.detach().reshape(-1)[:1024].to("cpu", torch.float32)
        h.update(f"{tuple(value.shape)}{value.dtype}".encode())
        h.update(flat.numpy().tobytes())
    elif isinstance(value, (list, tuple)):
        for item in value:
            _hash_value(h, item, depth + 1)
    elif hasattr(value, "weights"):  # ComfyUI's weight adapters (LoRA, LoHa, ...)
        h.update(type(value).__name__.encode())
        _hash_value(h, value.weights, depth + 1)
    else:
        h.update(repr(value if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__)
                 .encode())


def model_fingerprint(model: Any) -> str:
    """What decides a native MODEL's output, for the resume key: the checkpoint it was loaded from (path,
    size, modification time, load options), its weight patches (LoRA strengths and tensors) and the names
    of its model patches and wrappers (EasyCache, TorchCompileModel, shift ...)."""
    from anytalker_core.generation.window_store import module_fingerprint

    h = hashlib.blake2b(digest_size=16)
    init = getattr(model, "cached_patcher_init", None)
    if init is not None and init[1] and os.path.isfile(str(init[1][0])):
        stat = os.stat(str(init[1][0]))
        h.update(json.dumps([str(a) for a in init[1]] + [stat.st_size, stat.st_mtime_ns]).encode())
    else:
        h.update(module_fingerprint(model.model.diffusion_model).encode())
    for key in sorted(model.patches):
        h.update(key.encode())
        _hash_value(h, model.patches[key])
    options = model.model_options
    described = {k: sorted(map(str, v)) if isinstance(v, dict) else type(v).__name__
                 for k, v in sorted(options.get("transformer_options", {}).items())}
    described["options"] = sorted(k for k in options if k != "transformer_options")
    described["object_patches"] = sorted(model.object_patches)
    sampling = model.get_model_object("model_sampling")
    described["model_sampling"] = [type(sampling).__name__, float(getattr(sampling, "shift", 0.0))]
    h.update(json.dumps(described, default=str).encode())
    return h.hexdigest()


def native_stages(model, positive, negative, clip_vision, vae, sampling: NativeSampling, steps: int) -> NativeStages:
    """:class:`NativeStages` for these ComfyUI objects (sigmas from the MODEL's own sampling, i.e. its shift)."""
    import comfy.samplers

    from .. import _bridge as bridge

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), sampling.scheduler, steps)
    return NativeStages(dit=None, clip_vision=bridge.ClipVisionAdapter(clip_vision), vae=bridge.VaeAdapter(vae),
                        placement=Placement(torch.device("cpu"), torch.float32), model=model, positive=positive,
                        negative=negative, sampling=sampling, sigmas=sigmas.cpu())


def generate(stages: NativeStages, template: Any, features: torch.Tensor, window_frames: int, options: Any, *,
             steps: int, seed: int, work_folder: str | None) -> np.ndarray:
    """The clip (uint8 ``[T, H, W, 3]``, ``T`` = the audio's frames) in windows by ``run_windows``, with one
    ComfyUI progress bar over all windows and ComfyUI's Cancel; ``work_folder``: keep finished windows there
    (resume), removed when the clip is done."""
    import comfy.utils

    from anytalker_core.generation.window_plan import needs_windows
    from anytalker_core.generation.window_store import WindowStore
    from anytalker_core.generation.windows import run_key_for, run_windows

    from .. import _bridge as bridge

    total = int(features.shape[1])
    bar = comfy.utils.ProgressBar(steps)

    def progress(done: int, of: int) -> None:
        preview, stages.preview = stages.preview, None
        bar.update_absolute(done, of, preview)

    if not needs_windows(total, window_frames):  # one pass, as the pack's Long Sampler
        latent = stages.denoise(template, steps=steps, seed=seed, progress=progress,
                                should_stop=bridge.interrupt_check)
        return stages.decode(latent)
    chunks: list[np.ndarray] = []
    store = None
    if work_folder is not None:
        s = stages.sampling
        sampling = {"sampler_name": s.sampler_name, "scheduler": s.scheduler, "cfg": s.cfg, "audio_cfg": s.audio_cfg,
                    "sigmas": [round(float(x), 7) for x in stages.sigmas], "model": model_fingerprint(stages.model),
                    "route": "native"}
        key, described = run_key_for(stages, template, features, total, window_frames, options, steps, seed,
                                     sampling)
        store = WindowStore(work_folder, key, described)
    run_windows(stages, template, features, total, window_frames, chunks.append, options=options, steps=steps,
                seed=seed, progress=progress, should_stop=bridge.interrupt_check, store=store)
    if store is not None:
        store.remove()
    return np.concatenate(chunks, axis=0)
