"""Model loaders: the AnyTalker DiT (``diffusion_models``) and wav2vec2 (``audio_encoders``)."""

from __future__ import annotations

import logging
import os

import torch

from anytalker_core.model.precision import auto_dtype
from comfy_api.latest import io

from ._bridge import AnyTalkerModel
from .model_files import missing_file_message
from .types import AnyTalkerModelType, Wav2VecType

log = logging.getLogger(__name__)

DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# storage options for the transformer blocks' weights (computation stays in weight_dtype)
STORAGE = {"same": None, "fp8_e4m3fn": torch.float8_e4m3fn}
ATTENTION = ["sdpa", "flash_attn", "sage"]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 where the hardware runs it fast (a bf16 GPU, a CPU with AVX512-BF16/AMX), fp16 on
    other GPUs, else fp32 (:func:`anytalker_core.model.precision.auto_dtype`)."""
    dtype = DTYPES[name]
    return dtype if dtype is not None else auto_dtype(device)


class AnyTalkerModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        return io.Schema(
            node_id="AnyTalkerModelLoader",
            display_name="Load AnyTalker Model",
            category="AnyTalker/loaders",
            description="Loads an AnyTalker DiT (Wan2.1 with Audio-Face Cross Attention), the released .pth "
                        "or a converted .safetensors, from models/diffusion_models.",
            inputs=[
                io.Combo.Input("model_name", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="AnyTalker checkpoint in models/diffusion_models (1_3B-single-v1.pth, "
                                       "14B-multi-v1.pth or a converted .safetensors). A config_af2v_*.json "
                                       "beside it is used when present; otherwise sizes come from the weights."),
                io.Combo.Input("weight_dtype", options=list(DTYPES), default="auto",
                               tooltip="Compute precision of the DiT. auto = bf16 on GPUs that support it "
                                       "(else fp16), fp32 on the CPU."),
                io.Combo.Input("block_storage", options=list(STORAGE), default="same", advanced=True,
                               tooltip="fp8_e4m3fn stores the transformer blocks' weights in 8 bits, computed in "
                                       "weight_dtype: about half the memory (14B release: 39 -> 20 GiB), "
                                       "slightly less accurate. same = weight_dtype."),
                io.Combo.Input("attention", options=ATTENTION, default="sdpa", advanced=True,
                               tooltip="Attention kernel: sdpa (PyTorch, always available), flash_attn or "
                                       "sage (need their packages; used for unmasked fp16/bf16 GPU attention)."),
            ],
            outputs=[AnyTalkerModelType.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        return model_file_check("model_name", model_name, "diffusion_models")

    @classmethod
    def execute(cls, model_name: str, weight_dtype: str = "auto", attention: str = "sdpa",
                block_storage: str = "same") -> io.NodeOutput:
        import comfy.model_management as mm
        import folder_paths

        from anytalker_core.model.checkpoint import load_dit

        path = folder_paths.get_full_path_or_raise("diffusion_models", model_name)
        dtype = resolve_dtype(weight_dtype, mm.get_torch_device())
        dit = load_dit(path, device=mm.unet_offload_device(), dtype=dtype, weight_dtype=STORAGE[block_storage],
                       attention=attention)  # the model's own attention backend (a missing package fails here)
        return io.NodeOutput(AnyTalkerModel(dit=dit, dtype=dtype, attention=attention, name=model_name))


def model_file_check(input_name: str, value: str, directory: str) -> bool | str:
    """ComfyUI input validation of a model-file combo: ``True``, or a message saying where the file goes and
    where to download it (instead of ComfyUI's generic "Value not in list")."""
    import folder_paths

    available = folder_paths.get_filename_list(directory)
    if value in available:
        return True
    return missing_file_message(input_name, value, directory, available)


def wav2vec_location(path: str) -> str:
    """A weights file inside a Hugging Face folder (``config.json`` beside it) loads as that folder."""
    folder = os.path.dirname(path)
    if os.path.basename(path) in ("model.safetensors", "pytorch_model.bin") and \
            os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    return path


class AnyTalkerWav2VecLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        return io.Schema(
            node_id="AnyTalkerWav2VecLoader",
            display_name="Load AnyTalker wav2vec2",
            category="AnyTalker/loaders",
            description="Loads facebook/wav2vec2-base-960h from models/audio_encoders (a Hugging Face folder "
                        "or one .safetensors file).",
            inputs=[
                io.Combo.Input("model_name", options=folder_paths.get_filename_list("audio_encoders"),
                               tooltip="wav2vec2-base-960h in models/audio_encoders: pick its model.safetensors "
                                       "inside the Hugging Face folder, or a single-file .safetensors."),
            ],
            outputs=[Wav2VecType.Output(display_name="wav2vec")],
        )

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        return model_file_check("model_name", model_name, "audio_encoders")

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        import folder_paths

        from anytalker_core.audio import load_wav2vec

        path = folder_paths.get_full_path_or_raise("audio_encoders", model_name)
        # wav2vec2-base is small (95M params): it stays on the CPU, in float32 like the reference.
        return io.NodeOutput(load_wav2vec(wav2vec_location(path), device="cpu", dtype=torch.float32))
