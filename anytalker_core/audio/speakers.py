"""Speaker embeddings: the GE2E voice encoder whose weights ship in the Resemblyzer wheel.

``resemblyzer/pretrained.pt`` (Apache-2.0) holds a 3-layer LSTM (40 mel bands → 256) and a linear
projection trained with the generalised end-to-end loss (Wan et al. 2018); the embedding of a window
of speech is ``normalize(relu(linear(h_last)))``, 256-d, on the unit sphere, so cosine similarity
tells voices apart. The network and its 40-band mel input (25 ms windows, 10 ms hop, power mel, not
log) are rebuilt here from the weights, so only the weight file is needed: Resemblyzer's own import
pulls in ``webrtcvad``, which we do not use. ``tests/test_audio_speakers.py`` checks that the
embeddings equal ``resemblyzer.VoiceEncoder``'s.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..constants import SAMPLE_RATE
from ..errors import CheckpointError, InputError, MissingModelError
from .vad import one_thread

log = logging.getLogger(__name__)

MEL_BANDS = 40
MEL_HOP = 160  # 10 ms
MEL_WINDOW = 400  # 25 ms
EMBEDDING_SIZE = 256

__all__ = ["VoiceEncoder", "load_voice_encoder", "mel_frames"]


def _packaged_weights() -> Path:
    from ..io.model_paths import packaged_file

    return packaged_file(
        "resemblyzer", "pretrained.pt",
        "speaker embeddings need the GE2E weights that ship in the Resemblyzer wheel: "
        "pip install --no-deps resemblyzer (its webrtcvad dependency is not needed)",
        "the resemblyzer package has no weight file at '{path}'; reinstall it")


def mel_frames(wave: np.ndarray) -> np.ndarray:
    """Resemblyzer's input: 40-band power mel of 16 kHz ``wave`` ``[S]`` → ``[1 + S // 160, 40]`` float32."""
    import librosa

    mel = librosa.feature.melspectrogram(y=np.asarray(wave, dtype=np.float32), sr=SAMPLE_RATE, n_fft=MEL_WINDOW,
                                         hop_length=MEL_HOP, n_mels=MEL_BANDS)
    return mel.astype(np.float32).T


class VoiceEncoder(nn.Module):
    """GE2E speaker encoder. ``forward(mels [B, T, 40]) -> [B, 256]`` unit-norm embeddings."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(MEL_BANDS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, EMBEDDING_SIZE)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)  # hidden [3, B, 256]
        embeds = torch.relu(self.linear(hidden[-1]))
        return embeds / embeds.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.inference_mode()
    def embed_windows(self, mels: np.ndarray, starts: np.ndarray, length: int, batch_size: int = 256) -> np.ndarray:
        """Embeddings of ``mels[s : s + length]`` for each ``s`` in ``starts`` → ``[W, 256]`` float32."""
        starts = np.asarray(starts, dtype=np.int64)
        if starts.size == 0:
            return np.zeros((0, EMBEDDING_SIZE), dtype=np.float32)
        if length <= 0 or starts.min() < 0 or starts.max() + length > mels.shape[0]:
            raise InputError(f"speaker windows out of range (length {length}, {mels.shape[0]} mel frames)")
        index = starts[:, None] + np.arange(length)[None]
        out = []
        param = next(self.parameters())
        with one_thread():
            for i in range(0, len(starts), batch_size):
                batch = torch.from_numpy(mels[index[i:i + batch_size]]).to(param.device, param.dtype)
                out.append(self(batch).float().cpu().numpy())
        return np.concatenate(out)


_CACHE: dict[str, VoiceEncoder] = {}
_LOCK = threading.Lock()


def load_voice_encoder(path: str | Path | None = None) -> VoiceEncoder:
    """The GE2E encoder from the installed Resemblyzer wheel (or a ``pretrained.pt`` at ``path``), CPU, cached."""
    path = Path(path) if path is not None else _packaged_weights()
    with _LOCK:
        if str(path) in _CACHE:
            return _CACHE[str(path)]
        if not path.is_file():
            raise MissingModelError(f"voice encoder weights '{path}' do not exist")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt or foreign files
            raise CheckpointError(f"voice encoder weights '{path}' could not be read ({exc})") from None
        state = checkpoint.get("model_state", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise CheckpointError(f"voice encoder weights '{path}': expected a Resemblyzer checkpoint with 'model_state'")
        state = {k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}
        encoder = VoiceEncoder()
        try:
            encoder.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"voice encoder weights '{path}' do not fit the GE2E encoder ({exc})") from None
        _CACHE[str(path)] = encoder.eval()
        return _CACHE[str(path)]
