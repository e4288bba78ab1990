"""Test-only ComfyUI nodes for tests/test_comfyui_server.py (never shipped with the pack).

ComfyUI's own loaders pick CLIP-vision and UMT5 architectures from fixed full-size configs, so the
tiny random models of anytalker_core.testing.demo cannot go through Load CLIP Vision / Load CLIP. These two
nodes load the same tiny files into the types those native nodes produce:

* ``AnyTalkerTestClipVision`` → a real ``comfy.clip_vision.ClipVisionModel`` (ComfyUI's class) built
  from a small config and the tiny weights file.
* ``AnyTalkerTestTextEncode`` → CONDITIONING as CLIP Text Encode gives it for Wan: the UMT5 hidden
  states of the prompt (anytalker_core's tiny encoder), zero-padded to 512 tokens.
"""

import os
import sys

import torch
from comfy_api.latest import ComfyExtension, io

PACK = os.environ.get("ANYTALKER_PACK_DIR")
if PACK and PACK not in sys.path:
    sys.path.append(PACK)


class AnyTalkerTestClipVision(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="AnyTalkerTestClipVision", category="AnyTalker/testing",
                         inputs=[io.String.Input("path", tooltip="tiny CLIP vision .safetensors")],
                         outputs=[io.ClipVision.Output()])

    @classmethod
    def execute(cls, path):
        import comfy.clip_vision
        import comfy.utils

        sd = comfy.utils.load_torch_file(path, safe_load=True)
        sd = {k if k.startswith("vision_model.") else "vision_model." + k: v for k, v in sd.items()}
        hidden, _, patch, _ = sd["vision_model.embeddings.patch_embedding.weight"].shape
        layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("vision_model.encoder.layers."))
        config = {"hidden_act": "gelu", "hidden_size": int(hidden), "image_size": 224, "patch_size": int(patch),
                  "intermediate_size": int(sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
                  "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
                  "num_channels": 3, "num_hidden_layers": int(layers), "projection_dim": int(hidden)}
        model = comfy.clip_vision.ClipVisionModel(config)
        missing, _ = model.load_sd(sd)
        missing = [k for k in missing if "projection" not in k]  # the projection head is never used here
        if missing:
            raise RuntimeError(f"tiny CLIP vision file lacks {missing[:5]}")
        return io.NodeOutput(model)


class AnyTalkerTestTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="AnyTalkerTestTextEncode", category="AnyTalker/testing",
                         inputs=[io.String.Input("path", tooltip="tiny UMT5 .safetensors"),
                                 io.String.Input("text", tooltip="prompt")],
                         outputs=[io.Conditioning.Output()])

    @classmethod
    def execute(cls, path, text):
        from anytalker_core.encoders import load_text_encoder

        embeds = load_text_encoder(path).encode([text])[0]
        embeds = embeds.reshape(-1, embeds.shape[-1]).float()
        padded = torch.zeros(1, max(512, embeds.shape[0]), embeds.shape[-1])
        padded[0, :embeds.shape[0]] = embeds
        return io.NodeOutput([[padded, {"pooled_output": None}]])


class TestNodes(ComfyExtension):
    async def get_node_list(self):
        return [AnyTalkerTestClipVision, AnyTalkerTestTextEncode]


async def comfy_entrypoint():
    return TestNodes()
