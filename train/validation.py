"""Validation samples during training: generate from cached conditioning with the model being trained.

Every ``sample_every`` steps the main process takes the configured cached samples (their first
frame latent, masks, face tokens, audio features and caption embedding — no encoder is needed), runs
the inference sampler (:func:`anytalker_core.generation.stages.denoise`) with the
training weights, and writes ``RUN/samples/step-XXXXXXXX_<id>.safetensors`` (the latent). If
``sample_vae`` names a VAE file, the latent is also decoded to ``…_<id>.mp4``, with the source clip's
audio when that file is still at hand.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from anytalker_core.constants import SAMPLE_RATE
from anytalker_core.errors import InputError

from .data import CachedSample, SharedEmbeddings, collate

log = logging.getLogger(__name__)

__all__ = ["ValidationSampler"]


class ValidationSampler:
    """Generates validation videos from cached samples (main process only)."""

    def __init__(self, samples: list[CachedSample], shared: SharedEmbeddings, out_dir: Path, *, steps: int = 20,
                 guidance: float = 4.5, seed: int = 0, vae_path: str = "", audio_window: int = 5):
        if not samples:
            raise InputError("validation: no cached sample to generate from")
        self.samples = samples
        self.shared = shared
        self.out_dir = Path(out_dir)
        self.steps = steps
        self.guidance = guidance
        self.seed = seed
        self.vae_path = vae_path
        self.audio_window = audio_window
        self._vae = None

    def _condition(self, sample: CachedSample, device: torch.device):
        from anytalker_core.generation.types import Conditioning, PromptEmbeds, VideoPlan

        batch = collate([sample], audio_window=self.audio_window).to(device)
        empty = self.shared.empty
        null = (empty[None].to(device) if empty is not None else torch.zeros_like(batch.context))
        h, w = sample.image_hw
        frames = int(sample.audio_features.shape[1])
        return Conditioning(y=batch.y, clip_fea=batch.clip_fea, speakers=batch.speakers(),
                            prompts=PromptEmbeds(context=batch.context, context_null=null),
                            plan=VideoPlan(height=h, width=w, frame_num=frames))

    def _load_vae(self, device: torch.device):
        if self.vae_path and self._vae is None:
            from anytalker_core.encoders import load_vae

            self._vae = load_vae(self.vae_path, device=device, dtype=torch.float32)
        return self._vae

    @staticmethod
    def _source_audio(sample: CachedSample, frames: int, fps: float):
        source = sample.meta.get("source")
        if not source or not Path(source).is_file():
            return None
        from anytalker_core.io.media import load_audio

        try:
            wave = load_audio(source, SAMPLE_RATE)
        except InputError:
            return None
        start = int(round(float(sample.meta.get("start_seconds", 0.0)) * SAMPLE_RATE))
        return wave[start:start + int(frames / fps * SAMPLE_RATE)] if wave.numel() > start else None

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, step: int, device: torch.device) -> list[Path]:
        from safetensors.torch import save_file

        from anytalker_core.generation.stages import Placement, decode, denoise

        was_training = model.training
        model.eval()
        vae = self._load_vae(device)
        placement = Placement(device, torch.float32)
        written = []
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            for sample in self.samples:
                latent = denoise(model, self._condition(sample, device), steps=self.steps, guidance=self.guidance,
                                 seed=self.seed, placement=placement)
                stem = self.out_dir / f"step-{step:08d}_{sample.sample_id}"
                save_file({"latent": latent.float().cpu().contiguous()}, str(stem.with_suffix(".safetensors")))
                written.append(stem.with_suffix(".safetensors"))
                if vae is not None:
                    from anytalker_core.io.media import write_video

                    frames = decode(vae, latent, placement)
                    fps = float(sample.meta.get("fps", 24.0))
                    audio = self._source_audio(sample, frames.shape[0], fps)
                    written.append(write_video(stem.with_suffix(".mp4"), frames, fps, audio=audio))
                log.info("validation sample at step %d: %s", step, stem.name)
        finally:
            model.train(was_training)
        return written
