"""The model files the shipped workflows use: where each comes from and which ComfyUI folder it goes in.

One table serves three places: the loaders' messages when a file is missing, the ``models`` metadata in every
shipped workflow (ComfyUI's Missing Models panel offers the download from it), and the test that checks both.
"""

from __future__ import annotations

from dataclasses import dataclass

HF = "https://huggingface.co"
WAN_REPACKAGED = f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"


@dataclass(frozen=True)
class ModelFile:
    """One downloadable model file.

    Attributes:
        name: the file name as the workflow's loader widget holds it (relative to ``directory``).
        url: where to download it (the frontend accepts Hugging Face / Civitai addresses).
        directory: the ComfyUI models folder it belongs in (``models/<directory>/``).
        what: one line for messages.
    """

    name: str
    url: str
    directory: str
    what: str

    def metadata(self) -> dict[str, str]:
        """The entry of a workflow node's ``properties.models`` list (ComfyUI frontend format)."""
        return {"name": self.name, "url": self.url, "directory": self.directory}


MODEL_FILES: tuple[ModelFile, ...] = (
    ModelFile("1_3B-single-v1.pth", f"{HF}/zzz66/AnyTalker-1.3B/resolve/main/1_3B-single-v1.pth",
              "diffusion_models", "AnyTalker 1.3B (fused AFCA)"),
    ModelFile("14B-multi-v1.pth", f"{HF}/zzz66/AnyTalker-1.3B/resolve/main/14B-multi-v1.pth",
              "diffusion_models", "AnyTalker 14B multi-person"),
    ModelFile("wav2vec2-base-960h.safetensors", f"{HF}/facebook/wav2vec2-base-960h/resolve/main/model.safetensors",
              "audio_encoders", "wav2vec2-base-960h (the audio encoder AnyTalker was trained with)"),
    ModelFile("umt5_xxl_fp8_e4m3fn_scaled.safetensors",
              f"{WAN_REPACKAGED}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
              "text_encoders", "umt5-xxl text encoder (Wan)"),
    ModelFile("clip_vision_h.safetensors", f"{WAN_REPACKAGED}/clip_vision/clip_vision_h.safetensors",
              "clip_vision", "CLIP ViT-H/14 vision encoder"),
    ModelFile("wan_2.1_vae.safetensors", f"{WAN_REPACKAGED}/vae/wan_2.1_vae.safetensors",
              "vae", "Wan2.1 VAE"),
)

BY_NAME = {m.name: m for m in MODEL_FILES}


def missing_file_message(input_name: str, value: str, directory: str, available: list[str]) -> str:
    """What to tell a user whose workflow names a model file that is not in ``models/<directory>/``."""
    known = BY_NAME.get(value)
    where = f"ComfyUI/models/{directory}/"
    found = ", ".join(available[:8]) + (" ..." if len(available) > 8 else "") if available else "none"
    text = f"{input_name}: '{value}' is not in {where} (files there: {found})."
    if known is not None:
        text += f" Download {known.what} from {known.url} into {where}"
        if known.name != known.url.rsplit("/", 1)[-1]:
            text += f" as {known.name}"
        text += ", then refresh the browser (R) or pick another file."
    else:
        text += f" Put the file in {where} and refresh the browser (R), or pick one of the files listed."
    return text
