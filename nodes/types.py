"""The pack's custom socket types (each carries one payload class from :mod:`._bridge`)."""

from __future__ import annotations

from comfy_api.latest import io

#: :class:`._bridge.AnyTalkerModel` — the AFCA-patched Wan DiT.
AnyTalkerModelType = io.Custom("ANYTALKER_MODEL")
#: ``anytalker_core.audio.Wav2VecEncoder`` — wav2vec2-base-960h with the reference's feature path.
Wav2VecType = io.Custom("ANYTALKER_WAV2VEC")
#: :class:`._bridge.AudioPayload` — per-person audio features on one video timeline.
AudioFeaturesType = io.Custom("ANYTALKER_AUDIO")
#: :class:`._bridge.FaceSelection` — one face per person, identity order.
FacesType = io.Custom("ANYTALKER_FACES")
#: ``anytalker_core.generation.types.Conditioning`` — everything the DiT needs besides noise and settings.
ConditioningType = io.Custom("ANYTALKER_CONDITIONING")
