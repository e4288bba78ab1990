"""V3 nodes of the native route: ComfyUI's MODEL, CONDITIONING, LATENT and GUIDER, with any ComfyUI sampler.

Graph: Load AnyTalker Diffusion Model (native) → [LoraLoaderModelOnly, TorchCompileModel, EasyCache,
ModelSamplingSD3 ...] → AnyTalker To Video (native) (+ CLIP Text Encode, Load CLIP Vision, Load VAE, the
pack's Audio Encode and Face Masks) → KSampler / SamplerCustomAdvanced (with AnyTalker Text/Audio Guider)
→ VAE Decode → Create Video. Long clips: per further window AnyTalker Extend Video (native) → KSampler → VAE
Decode → AnyTalker Join Windows (native).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from comfy_api.latest import io

from anytalker_core.constants import MAX_AREA
from anytalker_core.errors import InputError

from .. import _bridge as bridge
from ..generate import AnyTalkerConditioning
from ..types import AudioFeaturesType, FacesType

log = logging.getLogger(__name__)

WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def model_options_for(weight_dtype: str) -> dict:
    """ComfyUI's ``Load Diffusion Model`` weight_dtype choices as model_options."""
    options: dict = {}
    if weight_dtype.startswith("fp8_e4m3fn"):
        options["dtype"] = torch.float8_e4m3fn
        options["fp8_optimizations"] = weight_dtype.endswith("_fast")
    elif weight_dtype == "fp8_e5m2":
        options["dtype"] = torch.float8_e5m2
    return options


class AnyTalkerNativeModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        return io.Schema(
            node_id="AnyTalkerNativeModelLoader",
            display_name="Load AnyTalker Diffusion Model (native)",
            category="AnyTalker/native",
            description="Loads an AnyTalker checkpoint as ComfyUI's own Wan2.1 MODEL (the Audio-Face Cross "
                        "Attention rides along in the same model), so KSampler, LoRA loaders, TorchCompileModel, "
                        "EasyCache and ComfyUI's memory management work with it.",
            inputs=[
                io.Combo.Input("unet_name", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="AnyTalker checkpoint in models/diffusion_models: 1_3B-single-v1.pth, "
                                       "14B-multi-v1.pth or a .safetensors. A config_af2v_*.json beside it is "
                                       "used when present; otherwise sizes come from the weights."),
                io.Combo.Input("weight_dtype", options=WEIGHT_DTYPES, default="default", advanced=True,
                               tooltip="As in Load Diffusion Model: default picks ComfyUI's dtype for your "
                                       "device; fp8 stores every weight in 8 bits (about half the memory)."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, unet_name: str) -> bool | str:
        from ..loaders import model_file_check

        return model_file_check("unet_name", unet_name, "diffusion_models")

    @classmethod
    def execute(cls, unet_name: str, weight_dtype: str = "default") -> io.NodeOutput:
        import folder_paths

        from .weights import load_native_model

        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        return io.NodeOutput(load_native_model(path, model_options=model_options_for(weight_dtype)))


def _common_inputs() -> list:
    return [
        io.Model.Input("model", tooltip="From Load AnyTalker Diffusion Model (native), after any LoRA / "
                                        "compile / cache nodes."),
        io.Conditioning.Input("positive", tooltip="Prompt from CLIP Text Encode (umt5_xxl, type wan)."),
        io.Conditioning.Input("negative", tooltip="Negative prompt; its branch also gets silent (zeroed) audio."),
        io.ClipVision.Input("clip_vision", tooltip="CLIP ViT-H/14 (clip_vision_h.safetensors): encodes the start "
                                                   "image and each face."),
        io.Vae.Input("vae", tooltip="Wan2.1 VAE (wan_2.1_vae.safetensors)."),
        io.Image.Input("start_image", tooltip="The first frame; the image the faces were found on."),
        FacesType.Input("faces", tooltip="From AnyTalker Face Masks."),
        AudioFeaturesType.Input("audio_features", tooltip="From AnyTalker Audio Encode (the whole timeline)."),
    ]


_OUTPUTS = [
    io.Model.Output(display_name="model", tooltip="The model with these speakers' AFCA; connect to the sampler."),
    io.Conditioning.Output(display_name="positive"),
    io.Conditioning.Output(display_name="negative"),
    io.Latent.Output(display_name="latent", tooltip="Empty latent of the clip (or window)."),
]


def core_condition(positive, negative, clip_vision, vae, start_image, faces, audio_features, max_pixels: int):
    """The core ``Conditioning`` (the standalone route's exact DiT inputs), built by AnyTalker Conditioning."""
    return AnyTalkerConditioning.execute(positive, negative, clip_vision, vae, start_image, faces, audio_features,
                                         max_pixels).args[0]


class AnyTalkerNativeToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AnyTalkerNativeToVideo",
            display_name="AnyTalker To Video (native)",
            category="AnyTalker/native",
            description="Binds each voice to its face on the native Wan MODEL and builds the positive/negative "
                        "CONDITIONING (first-frame latent, face-mask channels, CLIP image tokens) and the empty "
                        "LATENT for KSampler. Put ModelSamplingSD3 (shift 3 at 480p, as the reference) before it.",
            inputs=[
                *_common_inputs(),
                io.Int.Input("max_pixels", default=MAX_AREA, min=32 * 32, max=1920 * 1088, step=1024,
                             advanced=True, tooltip="Largest video area; the image's aspect is kept and sides "
                                                    "snap to multiples of 32. 399360 = 832x480."),
                io.Int.Input("window_frames", default=0, min=0, max=4097, step=4, advanced=True,
                             tooltip="0 = the whole clip in one pass. Otherwise only the first window of this "
                                     "many frames (4m+1); continue with AnyTalker Extend Video (native)."),
            ],
            outputs=list(_OUTPUTS),
        )

    @classmethod
    def execute(cls, model, positive, negative, clip_vision, vae, start_image, faces, audio_features,
                max_pixels: int = MAX_AREA, window_frames: int = 0) -> io.NodeOutput:
        from .conditioning import to_native

        condition = core_condition(positive, negative, clip_vision, vae, start_image, faces, audio_features,
                                   max_pixels)
        if window_frames:
            condition = condition.window(0, window_length(window_frames, condition.plan.frame_num, 0))
        return io.NodeOutput(*to_native(model, condition, positive, negative))


def window_length(window_frames: int, total: int, start: int) -> int:
    """Frames of the window starting at ``start``: ``window_frames`` (4m+1) or what is left of the clip."""
    if window_frames < 5 or (window_frames - 1) % 4:
        raise InputError(f"window_frames: expected 4m+1 frames (5, 9, ..., 81), got {window_frames}")
    left = total - start
    if left < 5:
        raise InputError(f"previous_frames: {start + 1} frames already cover the {total}-frame clip; "
                         "nothing is left to extend")
    return min(window_frames, 4 * ((left - 1) // 4) + 1)


class AnyTalkerNativeExtend(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AnyTalkerNativeExtend",
            display_name="AnyTalker Extend Video (native)",
            category="AnyTalker/native",
            description="The next window of a long clip: starts from the last of previous_frames (the clip so "
                        "far), with the audio of the frames that follow. Sample it, decode it, drop its first "
                        "frame and append it with AnyTalker Join Windows (native).",
            inputs=[
                *_common_inputs(),
                io.Image.Input("previous_frames", tooltip="Every frame generated so far (24 fps)."),
                io.Int.Input("window_frames", default=81, min=5, max=4097, step=4,
                             tooltip="Frames in this window, 4m+1 (81 = 3.4 s); shortened at the clip's end."),
                io.Int.Input("max_pixels", default=MAX_AREA, min=32 * 32, max=1920 * 1088, step=1024,
                             advanced=True, tooltip="The same value as on AnyTalker To Video (native)."),
            ],
            outputs=[*_OUTPUTS, io.Int.Output(display_name="frames_left",
                                              tooltip="Frames of the clip after this window (0 = done).")],
        )

    @classmethod
    def execute(cls, model, positive, negative, clip_vision, vae, start_image, faces, audio_features,
                previous_frames, window_frames: int = 81, max_pixels: int = MAX_AREA) -> io.NodeOutput:
        from anytalker_core.generation import stages

        from .conditioning import to_native

        condition = core_condition(positive, negative, clip_vision, vae, start_image, faces, audio_features,
                                   max_pixels)
        start = int(previous_frames.shape[0]) - 1
        if start < 4 or start % 4:
            raise InputError(f"previous_frames: {start + 1} frames; a clip built from 4m+1-frame windows that "
                             "share one frame has 4k+1 frames (81, 161, ...)")
        length = window_length(window_frames, condition.plan.frame_num, start)
        window = condition.window(start, length)
        last = bridge.image_to_uint8(previous_frames[-1:], "previous_frames")
        plan_hw = (window.plan.height, window.plan.width)
        if tuple(last.shape[:2]) != plan_hw:
            raise InputError(f"previous_frames are {last.shape[1]}x{last.shape[0]} but this clip is "
                             f"{plan_hw[1]}x{plan_hw[0]}; pass the decoded frames of the earlier windows")
        window = stages.condition_from_frame(bridge.ClipVisionAdapter(clip_vision), bridge.VaeAdapter(vae), window,
                                             np.ascontiguousarray(last))
        left = condition.plan.frame_num - (start + length)
        return io.NodeOutput(*to_native(model, window, positive, negative), left)


class AnyTalkerNativeJoinWindows(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AnyTalkerNativeJoinWindows",
            display_name="AnyTalker Join Windows (native)",
            category="AnyTalker/native",
            description="Appends a decoded window to the clip so far. Consecutive windows share one frame (the "
                        "window starts from the clip's last frame), so the window's first frame is dropped.",
            inputs=[
                io.Image.Input("previous_frames", tooltip="The clip so far (what AnyTalker Extend Video got)."),
                io.Image.Input("window", tooltip="VAE Decode of the window sampled from AnyTalker Extend Video."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The clip so far, this window included.")],
        )

    @classmethod
    def execute(cls, previous_frames, window) -> io.NodeOutput:
        if tuple(previous_frames.shape[1:]) != tuple(window.shape[1:]):
            raise InputError(f"window: frames are {tuple(window.shape[1:3])} but previous_frames are "
                             f"{tuple(previous_frames.shape[1:3])}; join windows of the same clip")
        return io.NodeOutput(torch.cat([previous_frames, window[1:].to(previous_frames)], dim=0))


class AnyTalkerNativeGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AnyTalkerNativeGuider",
            display_name="AnyTalker Text/Audio Guider (native)",
            category="AnyTalker/native",
            description="Separate guidance for the prompt and for the audio, for SamplerCustomAdvanced: "
                        "uncond + text_cfg (text_only - uncond) + audio_cfg (cond - text_only); text_only is "
                        "the prompt with silent audio. Equal scales = KSampler's one cfg (2 passes per step).",
            inputs=[
                io.Model.Input("model", tooltip="The model from AnyTalker To Video (native)."),
                io.Conditioning.Input("positive", tooltip="positive from AnyTalker To Video (native)."),
                io.Conditioning.Input("negative", tooltip="negative from AnyTalker To Video (native); gets "
                                                          "silent audio."),
                io.Float.Input("text_cfg", default=4.5, min=0.0, max=20.0, step=0.1,
                               tooltip="Prompt guidance (reference: 4.5 for both)."),
                io.Float.Input("audio_cfg", default=4.5, min=0.0, max=20.0, step=0.1,
                               tooltip="Audio (lip-sync) guidance; different from text_cfg costs a third "
                                       "model pass per step."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, text_cfg: float = 4.5, audio_cfg: float = 4.5) -> io.NodeOutput:
        from .guider import AnyTalkerGuider

        guider = AnyTalkerGuider(model)
        guider.set_conds(positive, negative)
        guider.set_scales(text_cfg, audio_cfg)
        return io.NodeOutput(guider)


NODES: list[type[io.ComfyNode]] = [AnyTalkerNativeModelLoader, AnyTalkerNativeToVideo, AnyTalkerNativeExtend,
                                   AnyTalkerNativeJoinWindows, AnyTalkerNativeGuider]
