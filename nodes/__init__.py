"""ComfyUI nodes for AnyTalker (V3 API). Thin adapters: unpack ComfyUI types, call anytalker_core, wrap.

Graph: Load AnyTalker Model, Load AnyTalker wav2vec2 → AnyTalker Audio Encode (one AUDIO per person)
→ AnyTalker Face Masks → AnyTalker Conditioning (+ native CLIP Text Encode, Load CLIP Vision, Load VAE)
→ AnyTalker Sampler → VAE Decode → Create Video (24 fps, mixed audio) → Save Video; or AnyTalker Long
Sampler (chained windows, decodes itself) → Create Video. One recording of a whole conversation:
AnyTalker Split Voices → one AUDIO per person (and the speaking intervals for AnyTalker Score Video).
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .generate import AnyTalkerConditioning, AnyTalkerLongSampler, AnyTalkerSampler
from .inputs import AnyTalkerAudioEncode, AnyTalkerFaceMasks
from .loaders import AnyTalkerModelLoader, AnyTalkerWav2VecLoader
from .native.nodes import NODES as NATIVE_NODES
from .score import AnyTalkerScoreVideo
from .voices import AnyTalkerSplitVoices

NODES: list[type[io.ComfyNode]] = [
    AnyTalkerModelLoader,
    AnyTalkerWav2VecLoader,
    AnyTalkerAudioEncode,
    AnyTalkerFaceMasks,
    AnyTalkerConditioning,
    AnyTalkerSampler,
    AnyTalkerLongSampler,
    AnyTalkerScoreVideo,
    AnyTalkerSplitVoices,
    *NATIVE_NODES,
]


class AnyTalkerExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> AnyTalkerExtension:
    return AnyTalkerExtension()
