"""Optional source separation before gating (``split-voices --separate MODEL``): Asteroid checkpoints.

Gating alone cannot take the other voice out of overlapping speech, nor the background out of a
person's turn. With a separation model, each speaker's track is the separated source that sounds
like that speaker (instead of the mix), still gated to their turns.

The model is any `Asteroid <https://github.com/asteroid-team/asteroid>`_ separation model saved in
Asteroid's own file format: a ``torch.save`` of the dict that ``BaseModel.serialize()`` returns,
``{"model_name": "ConvTasNet", "model_args": {..., "sample_rate": 8000, "n_src": 2}, "state_dict": {...},
"infos": {...}}``. That is the ``pytorch_model.bin`` of Asteroid's published models (e.g. ConvTasNet or
DPRNNTasNet trained on Libri2Mix / WHAM!) and the ``best_model.pth`` its recipes write. Nothing is
downloaded: give the file. The file is read with ``torch.load(weights_only=True)``, so it cannot run
code. Asteroid builds the network (``BaseModel.from_pretrained``); install it with
``pip install --no-deps asteroid asteroid-filterbanks``. Its declared dependencies (torchaudio,
pytorch-lightning, ...) are not needed to run a model, and torchaudio would replace the torch build.

How a separated source is matched to a speaker (:func:`separate_tracks`):

1. The speech regions (VAD) are cut into chunks of at most ``chunk_s`` seconds. Each chunk is
   separated on its own, so memory stays bounded on long recordings. The mono mix is resampled to
   the model's rate, and the sources are resampled back.
2. A model's sources come out in no fixed order (permutation-invariant training), so the order is
   decided again in every chunk. Each source gets a GE2E embedding (:mod:`.speakers`; the mean over
   its 1.6 s windows that are within 10 dB of its loudest, so not its silences), and the
   speakers who talk in the chunk are matched one to one with the sources most similar to their
   voice centre (Hungarian assignment, scipy).
3. Speaker ``k``'s track is its matched source, gated to its turns (:func:`.voices.gate`), with the
   same source on every channel. A speaker left without a source in a chunk (more people talking in
   it than the model has outputs) gets the mix there, as without separation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..constants import SAMPLE_RATE
from ..errors import CheckpointError, InputError, Interrupted, MissingModelError

log = logging.getLogger(__name__)

CHUNK_S = 8.0
FLAG = "--separate"

__all__ = ["Separator", "load_separator", "match_sources", "separate_tracks", "CHUNK_S"]


@dataclass
class Separator:
    """A loaded separation model.

    Attributes:
        model: the Asteroid network, ``forward([B, S]) -> [B, n_src, S]`` at ``sample_rate``.
        sample_rate: the rate it was trained at (from ``model_args``).
        num_sources: how many sources it returns.
        path: the file it came from.
    """

    model: torch.nn.Module
    sample_rate: int
    num_sources: int
    path: Path

    @torch.inference_mode()
    def separate(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """``[S]`` mono at ``sample_rate`` → ``[num_sources, S]`` float32 at ``sample_rate``."""
        from ..io.media import resample

        x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(-1)
        if sample_rate != self.sample_rate:
            x = resample(x, sample_rate, self.sample_rate)
        param = next(self.model.parameters(), None)
        if param is not None:
            x = x.to(param.device, param.dtype)
        out = self.model(x[None])
        if out.ndim != 3 or out.shape[0] != 1 or out.shape[1] != self.num_sources:
            raise CheckpointError(f"{FLAG} '{self.path}': the model returned shape {tuple(out.shape)}, expected "
                                  f"[1, {self.num_sources}, samples]")
        out = _fit(out[0].float().cpu(), x.numel())
        if sample_rate != self.sample_rate:
            out = torch.stack([resample(src, self.sample_rate, sample_rate) for src in out])
        return _fit(out, int(np.asarray(wave).size)).numpy()


def _fit(sources: torch.Tensor, n: int) -> torch.Tensor:
    """``[n_src, L]`` cut or zero-padded to ``[n_src, n]`` (convolutional models may drop a few samples)."""
    if sources.shape[1] >= n:
        return sources[:, :n].contiguous()
    return torch.nn.functional.pad(sources, (0, n - sources.shape[1]))


def _asteroid():
    try:
        import asteroid.models as models
        from asteroid.models.base_models import BaseModel
    except ImportError as exc:
        raise MissingModelError(f"{FLAG} needs Asteroid to build the separation model: "
                                f"pip install --no-deps asteroid asteroid-filterbanks ({exc})") from None
    return models, BaseModel


def load_separator(path: str | Path, flag: str = FLAG) -> Separator:
    """Load an Asteroid separation checkpoint (see the module doc), CPU, eval mode.

    Raises:
        MissingModelError: no such file, or Asteroid is not installed.
        CheckpointError: not a torch file, not Asteroid's format, an unknown model, weights that do not
            fit, a model that is not a separator (fewer than two sources).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingModelError(f"{flag} '{path}': no such file; give an Asteroid separation checkpoint "
                                "(e.g. the pytorch_model.bin of a ConvTasNet trained on Libri2Mix)")
    models, base = _asteroid()
    from torch.torch_version import TorchVersion

    try:
        with torch.serialization.safe_globals([TorchVersion]):  # Asteroid stores torch.__version__ in "infos"
            conf = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{flag} '{path}' could not be read as a torch checkpoint ({exc})") from None
    missing = [k for k in ("model_name", "model_args", "state_dict") if not isinstance(conf, dict) or k not in conf]
    if missing:
        raise CheckpointError(f"{flag} '{path}' is not an Asteroid model file: missing {', '.join(missing)} "
                              "(expected the dict that asteroid's BaseModel.serialize() returns)")
    name = conf["model_name"]
    try:
        models.get(name)
    except (ValueError, TypeError):
        known = ", ".join(n for n in models.__all__ if n[0].isupper())
        raise CheckpointError(f"{flag} '{path}': unknown Asteroid model {name!r} (known: {known})") from None
    if not isinstance(conf["model_args"], dict):
        raise CheckpointError(f"{flag} '{path}': model_args must be a dict, got {type(conf['model_args']).__name__}")
    try:
        model = base.from_pretrained(conf)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{flag} '{path}': the {name} weights do not fit its model_args ({exc})") from None
    rate = getattr(model, "sample_rate", None) or conf["model_args"].get("sample_rate")
    if not rate:
        raise CheckpointError(f"{flag} '{path}': the file does not say the model's sample_rate (model_args)")
    model = model.eval()
    with torch.inference_mode():
        probe = model(torch.zeros(1, int(rate) // 10))
    if probe.ndim != 3 or probe.shape[1] < 2:
        raise CheckpointError(f"{flag} '{path}': {name} returns {tuple(probe.shape)}; a separation model with "
                              "two or more sources is needed (an enhancement model with one output cannot "
                              "split voices)")
    log.info("separation model %s (%d sources at %d Hz) from %s", name, probe.shape[1], int(rate), path)
    return Separator(model=model, sample_rate=int(rate), num_sources=int(probe.shape[1]), path=path)


def match_sources(sources16k: np.ndarray, speakers: Sequence[int], centroids: np.ndarray,
                  encoder) -> dict[int, int]:
    """Which source goes to which speaker in one chunk.

    Args:
        sources16k: ``[n_src, S]`` separated sources at 16 kHz.
        speakers: the speakers who talk in the chunk (indices into ``centroids``).
        centroids: ``[N, 256]`` unit GE2E voice centres.
        encoder: :class:`.speakers.VoiceEncoder`.
    Returns:
        ``{speaker: source}`` one to one (at most ``n_src`` speakers).
    """
    from scipy.optimize import linear_sum_assignment

    from .speakers import mel_frames

    speakers = list(speakers)
    if not speakers:
        return {}
    emb = []
    for src in sources16k:
        mels = mel_frames(src)
        length = min(160, mels.shape[0])
        starts = np.arange(0, mels.shape[0] - length + 1, max(1, length // 4))
        power = np.array([mels[a:a + length].sum() for a in starts])
        loud = starts[power >= 0.1 * power.max()] if power.max() > 0 else starts  # not the source's silences
        e = encoder.embed_windows(mels, loud, length).mean(0)
        emb.append(e / max(float(np.linalg.norm(e)), 1e-12))
    sims = centroids[speakers] @ np.stack(emb).T  # [speakers, sources]
    rows, cols = linear_sum_assignment(-sims)
    return {speakers[r]: int(c) for r, c in zip(rows, cols)}


def _chunks(speech: Sequence[tuple[float, float]], duration: float, chunk_s: float) -> list[tuple[float, float]]:
    out = []
    for s, e in speech:
        s, e = max(0.0, s - 0.05), min(duration, e + 0.05)
        n = max(1, int(np.ceil((e - s) / chunk_s)))
        out += [(s + (e - s) * i / n, s + (e - s) * (i + 1) / n) for i in range(n)]
    return out


def separate_tracks(x: np.ndarray, sample_rate: int, diarization, separate: Callable[[np.ndarray, int], np.ndarray],
                    encoder=None, chunk_s: float = CHUNK_S,
                    should_stop: Callable[[], bool] | None = None) -> list[np.ndarray]:
    """Per speaker, the separated source matched to them, chunk by chunk (ungated), ``[C, S]`` each.

    Args:
        x: ``[C, S]`` the recording at ``sample_rate``.
        diarization: :class:`.diarize.Diarization` (turns, speech regions, voice centres).
        separate: ``(mono [S], rate) -> [n_src, S]`` at the same rate (:meth:`Separator.separate`).
    """
    from ..io.media import resample
    from .speakers import load_voice_encoder

    encoder = encoder if encoder is not None else load_voice_encoder()
    mono = x.mean(0)
    n = mono.size
    out = [np.array(mono, dtype=np.float32) for _ in range(diarization.num_speakers)]
    for s, e in _chunks(diarization.speech, diarization.duration, chunk_s):
        if should_stop is not None and should_stop():
            raise Interrupted("speaker separation cancelled")
        a, b = int(round(s * sample_rate)), min(n, int(round(e * sample_rate)))
        if b - a < sample_rate // 10:
            continue
        who = [k for k, spans in enumerate(diarization.turns) if any(ts < e and te > s for ts, te in spans)]
        if not who:
            continue
        sources = separate(mono[a:b], sample_rate)
        if sources.ndim != 2 or sources.shape[1] != b - a:
            raise InputError(f"separation returned shape {sources.shape} for {b - a} samples")
        s16 = sources if sample_rate == SAMPLE_RATE else np.stack(
            [resample(src, sample_rate, SAMPLE_RATE).numpy() for src in sources])
        for k, j in match_sources(s16, who, diarization.centroids, encoder).items():
            out[k][a:b] = sources[j]
    return [np.repeat(track[None], x.shape[0], axis=0) for track in out]
