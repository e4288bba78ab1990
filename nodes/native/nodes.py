"""V3 nodes of the native route: ComfyUI's MODEL, CONDITIONING, LATENT and GUIDER, with any ComfyUI sampler.

Graph: Load AnyTalker Diffusion Model (native) → [LoraLoaderModelOnly, TorchCompileModel, EasyCache,
ModelSamplingSD3 ...] → AnyTalker To Video (native) (+ CLIP Text Encode, Load CLIP Vision, Load VAE, the
pack's Audio Encode and Face Masks) → KSampler / SamplerCustomAdvanced (with AnyTalker Text/Audio Guider)
→ VAE Decode → Create Video. Long clips: AnyTalker Long Sampler (native) (the same inputs as To Video, KSampler's
settings; overlapping motion-frame windows, :mod:`.long_clip`) → Create Video.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from anytalker_core.constants import MAX_AREA, WINDOW_FRAMES
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


def _max_pixels_input():
    return io.Int.Input("max_pixels", default=MAX_AREA, min=32 * 32, max=1920 * 1088, step=1024, advanced=True,
                        tooltip="Largest video area; the image's aspect is kept and sides snap to multiples of 32. "
                                "399360 = 832x480.")


def core_condition(positive, negative, clip_vision, vae, start_image, faces, audio_features, max_pixels: int,
                   window_frames: int):
    """The core ``Conditioning`` (the standalone route's exact DiT inputs), built by AnyTalker Conditioning:
    of the whole clip (``window_frames = 0``), or a ``WindowedCondition`` (the first window's conditioning
    and the whole timeline's audio features) when the clip is longer than ``window_frames``."""
    return AnyTalkerConditioning.execute(positive, negative, clip_vision, vae, start_image, faces, audio_features,
                                         max_pixels, window_frames).args[0]


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
                _max_pixels_input(),
            ],
            outputs=list(_OUTPUTS),
        )

    @classmethod
    def execute(cls, model, positive, negative, clip_vision, vae, start_image, faces, audio_features,
                max_pixels: int = MAX_AREA) -> io.NodeOutput:
        from .conditioning import to_native

        condition = core_condition(positive, negative, clip_vision, vae, start_image, faces, audio_features,
                                   max_pixels, window_frames=0)
        return io.NodeOutput(*to_native(model, condition, positive, negative))


class AnyTalkerNativeLongSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        from ..generate import long_clip_inputs

        return io.Schema(
            node_id="AnyTalkerNativeLongSampler",
            display_name="AnyTalker Long Sampler (native)",
            category="AnyTalker/native",
            description="A clip of any length on the native Wan MODEL, in overlapping windows of window_frames "
                        "frames sampled by ComfyUI's sampler: each window is conditioned on the last "
                        "overlap_frames frames of the one before (their latents pinned at every step, as "
                        "ComfyUI pins known latents), reads its own span of the audio (seed + window index), "
                        "keeps the start image's identity and is colour-matched to it; the shared frames are "
                        "blended, so the clip has exactly the audio's frame count. Connect the images to Create "
                        "Video at 24 fps with the mixed audio. Put ModelSamplingSD3 (shift 3 at 480p) before it.",
            inputs=[
                *_common_inputs(),
                io.Int.Input("window_frames", default=WINDOW_FRAMES, min=5, max=1001, step=4,
                             tooltip="Frames per window, 4m+1 (81 = 3.4 s, the training length). A clip no "
                                     "longer than this is one pass."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed of window 1; window k uses seed + k - 1."),
                io.Int.Input("steps", default=30, min=1, max=10000, tooltip="Denoising steps per window."),
                io.Float.Input("cfg", default=4.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance for text and audio together (reference: 4.5)."),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS),
                               default="uni_pc_bh2", tooltip="Any of KSampler's samplers."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="simple",
                               tooltip="Any of KSampler's schedulers (simple: the reference's flow schedule)."),
                io.Float.Input("audio_cfg", default=0.0, min=0.0, max=20.0, step=0.1, advanced=True,
                               tooltip="0 = one scale (cfg) for text and audio. Otherwise separate guidance, as "
                                       "AnyTalker Text/Audio Guider: cfg for the prompt, this for the audio (a "
                                       "third model pass per step)."),
                *long_clip_inputs(),
                _max_pixels_input(),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="All frames of the clip (24 fps): exactly "
                                                                    "the audio's frame count.")],
        )

    @classmethod
    @bridge.comfyui_messages
    def execute(cls, model, positive, negative, clip_vision, vae, start_image, faces, audio_features,
                window_frames: int = WINDOW_FRAMES, seed: int = 42, steps: int = 30, cfg: float = 4.5,
                sampler_name: str = "uni_pc_bh2", scheduler: str = "simple", audio_cfg: float = 0.0,
                overlap_frames: int = 0, colour_match: bool = True, overlap_mode: str = "latent",
                overlap_merge: str = "blend", clip_reference: str = "start", reanchor_every: int = 0,
                resume: bool = True, max_pixels: int = MAX_AREA) -> io.NodeOutput:
        import os

        import folder_paths

        from anytalker_core.generation.window_plan import check_window_frames
        from anytalker_core.generation.windows import WindowedCondition

        from ..generate import WORK_FOLDER, long_clip_options
        from .long_clip import NativeSampling, generate, native_stages

        window_frames = check_window_frames(window_frames)
        if window_frames == 0:
            raise InputError("window_frames: expected 4m+1 frames (5, 9, ..., 81)")
        options = long_clip_options(window_frames, overlap_frames, colour_match, overlap_mode, overlap_merge,
                                    clip_reference, reanchor_every)
        condition = core_condition(positive, negative, clip_vision, vae, start_image, faces, audio_features,
                                   max_pixels, window_frames)
        if isinstance(condition, WindowedCondition):
            template, features = condition.template, condition.features
        else:
            template = condition
            features = torch.cat([s.audio.detach().float().cpu() for s in condition.speakers])
        stages = native_stages(model, positive, negative, clip_vision, vae,
                               NativeSampling(sampler_name, scheduler, cfg, audio_cfg), steps)
        work = os.path.join(folder_paths.get_output_directory(), WORK_FOLDER) if resume else None
        frames = generate(stages, template, features, window_frames, options, steps=steps, seed=seed,
                          work_folder=work)
        return io.NodeOutput(bridge.uint8_to_image(frames))


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


NODES: list[type[io.ComfyNode]] = [AnyTalkerNativeModelLoader, AnyTalkerNativeToVideo, AnyTalkerNativeLongSampler,
                                   AnyTalkerNativeGuider]
