"""Test-only ComfyUI nodes for the real-ComfyUI tests (never shipped with the pack).

ComfyUI's own loaders (Load CLIP, Load CLIP Vision) choose the architecture from fixed full-size
configs keyed on layer counts, so the tiny random-weight files of ``anytalker_core.testing.demo`` (real file
formats, 2-3 layers) cannot go through them. These loaders build the *same ComfyUI classes* those
nodes build — ``comfy.sd.CLIP`` around ComfyUI's Wan UMT5 (``comfy.text_encoders.wan``, its
SentencePiece tokenizer from the file's ``spiece_model``) and ``comfy.clip_vision.ClipVisionModel`` —
with the sizes read from the tensors, through ComfyUI's own config hooks (``<name>_model_config``
model option, the CLIP-vision config dict). Everything downstream is native: CLIP Text Encode, the
CLIP_VISION object's encode, Load VAE, VAE Decode.

``AnyTalkerTestSaveTensors`` writes what reaches it (CONDITIONING, LATENT, or AnyTalker's own
conditioning) to a ``.safetensors`` file in the output folder, so a test can compare the graph's
values with ``AnyTalkerPipeline``'s. It never imports ``anytalker_core``.
"""

import dataclasses
import os
from typing import ClassVar

import torch
from comfy_api.latest import ComfyExtension, io


def _load(path):
    import comfy.utils

    return comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)


class AnyTalkerTestCLIPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="AnyTalkerTestCLIPLoader", category="AnyTalker/testing",
                         inputs=[io.String.Input("path", tooltip="tiny UMT5 .safetensors (ComfyUI layout)")],
                         outputs=[io.Clip.Output()])

    @classmethod
    def execute(cls, path):
        import comfy.sd
        import comfy.text_encoders.wan

        sd, _ = _load(path)
        bias = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]  # [buckets, heads]
        heads = int(bias.shape[1])
        layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.block."))
        config = {"d_model": int(sd["shared.weight"].shape[1]), "vocab_size": int(sd["shared.weight"].shape[0]),
                  "num_layers": layers, "num_decoder_layers": layers, "num_heads": heads,
                  "d_kv": int(sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]) // heads,
                  "d_ff": int(sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]),
                  "relative_attention_num_buckets": int(bias.shape[0])}

        class Target:  # what comfy.sd.load_text_encoder_state_dicts builds for CLIPType.WAN
            params: ClassVar[dict] = {}
            clip = comfy.text_encoders.wan.te()
            tokenizer = comfy.text_encoders.wan.WanT5Tokenizer

        clip = comfy.sd.CLIP(Target, tokenizer_data={"spiece_model": sd.get("spiece_model")}, state_dict=[sd],
                             model_options={"umt5xxl_model_config": config})
        return io.NodeOutput(clip)


class AnyTalkerTestClipVisionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="AnyTalkerTestClipVisionLoader", category="AnyTalker/testing",
                         inputs=[io.String.Input("path", tooltip="tiny CLIP vision .safetensors (ComfyUI layout)")],
                         outputs=[io.ClipVision.Output()])

    @classmethod
    def execute(cls, path):
        import comfy.clip_vision

        sd, metadata = _load(path)
        sd = {k if k.startswith(("vision_model.", "visual_projection")) else "vision_model." + k: v
              for k, v in sd.items()}
        hidden, _, patch, _ = sd["vision_model.embeddings.patch_embedding.weight"].shape
        positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
        layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("vision_model.encoder.layers."))
        grid = round((positions - 1) ** 0.5)
        config = {"hidden_act": "gelu", "hidden_size": int(hidden), "image_size": int(grid * patch),
                  "patch_size": int(patch), "layer_norm_eps": 1e-5, "model_type": "clip_vision_model",
                  "intermediate_size": int(sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
                  "num_attention_heads": int((metadata or {}).get("num_attention_heads", 2)),
                  "num_channels": 3, "num_hidden_layers": int(layers),
                  "projection_dim": int(sd["visual_projection.weight"].shape[0]) if "visual_projection.weight" in sd
                  else int(hidden)}
        model = comfy.clip_vision.ClipVisionModel(config)
        missing, _ = model.load_sd(sd)
        missing = [k for k in missing if "projection" not in k]  # the projection head is never used here
        if missing:
            raise RuntimeError(f"tiny CLIP vision file lacks {missing[:5]}")
        return io.NodeOutput(model)


def _flatten(prefix, value, out):
    """Tensors inside ``value`` (lists, dicts, dataclasses) as ``{dotted.name: tensor}``."""
    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach().float().cpu().contiguous()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            _flatten(f"{prefix}.{field.name}", getattr(value, field.name), out)
    elif isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, out)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _flatten(f"{prefix}.{i}", item, out)


class AnyTalkerTestSaveTensors(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="AnyTalkerTestSaveTensors", category="AnyTalker/testing", is_output_node=True,
                         inputs=[io.String.Input("filename", tooltip="file in the output folder"),
                                 io.AnyType.Input("value", tooltip="CONDITIONING, LATENT, ANYTALKER_* ...")],
                         outputs=[])

    @classmethod
    def execute(cls, filename, value):
        import folder_paths
        from safetensors.torch import save_file

        tensors = {}
        _flatten("value", value, tensors)
        path = os.path.join(folder_paths.get_output_directory(), filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file(tensors, path)
        return io.NodeOutput()


class TestNodes(ComfyExtension):
    async def get_node_list(self):
        return [AnyTalkerTestCLIPLoader, AnyTalkerTestClipVisionLoader, AnyTalkerTestSaveTensors]


async def comfy_entrypoint():
    return TestNodes()
