"""Conditioning assembly and sampling: native text/CLIP-vision/VAE outputs + faces + audio → LATENT."""

from __future__ import annotations

import dataclasses
import logging

import torch
from comfy_api.latest import io

from anytalker_core.errors import InputError

from . import _bridge as bridge
from .types import AnyTalkerModelType, AudioFeaturesType, ConditioningType, FacesType

log = logging.getLogger(__name__)

MAX_AREA_480P = 832 * 480


def text_embeds(conditioning, what: str) -> torch.Tensor:
    """Native CONDITIONING ``[[tensor [1, L, D], {...}], ...]`` → ``[1, L, D]`` float32 (first entry)."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning or \
            not isinstance(conditioning[0], (list, tuple)) or not isinstance(conditioning[0][0], torch.Tensor):
        raise InputError(f"{what}: expected a CONDITIONING from CLIP Text Encode (umt5_xxl loaded with "
                         f"Load CLIP, type wan), got {type(conditioning).__name__}")
    if len(conditioning) > 1:
        log.warning("%s: %d conditioning entries, AnyTalker uses the first", what, len(conditioning))
    embeds = conditioning[0][0]
    if embeds.ndim != 3 or embeds.shape[0] != 1:
        raise InputError(f"{what}: text embeddings must be [1, tokens, width], got {tuple(embeds.shape)}")
    return embeds.detach().float().cpu()


class AnyTalkerConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AnyTalkerConditioning",
            display_name="AnyTalker Conditioning",
            category="AnyTalker/conditioning",
            description="Builds the DiT inputs: text, CLIP tokens of the start image and of each face, the "
                        "first-frame latent with the face-mask channels, and each person's audio.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Prompt from CLIP Text Encode (umt5_xxl, type wan)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt from CLIP Text Encode; its branch also "
                                                          "gets silent (zeroed) audio."),
                io.ClipVision.Input("clip_vision", tooltip="CLIP ViT-H/14 (clip_vision_h.safetensors) from Load "
                                                           "CLIP Vision; encodes the whole image and each face."),
                io.Vae.Input("vae", tooltip="Wan2.1 VAE (wan_2.1_vae.safetensors) from Load VAE."),
                io.Image.Input("start_image", tooltip="The first frame; the same image the faces were found on."),
                FacesType.Input("faces", tooltip="From AnyTalker Face Masks."),
                AudioFeaturesType.Input("audio_features", tooltip="From AnyTalker Audio Encode."),
                io.Int.Input("max_pixels", default=MAX_AREA_480P, min=32 * 32, max=1920 * 1088, step=1024,
                             advanced=True,
                             tooltip="Largest video area in pixels; the image's aspect is kept and sides snap "
                                     "to multiples of 32. 399360 = 832x480 (the models' training size)."),
            ],
            outputs=[
                ConditioningType.Output(display_name="conditioning"),
                io.Int.Output(display_name="width", tooltip="Video width in pixels."),
                io.Int.Output(display_name="height", tooltip="Video height in pixels."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, clip_vision, vae, start_image, faces, audio_features,
                max_pixels: int = MAX_AREA_480P) -> io.NodeOutput:
        from anytalker_core.pipeline import AnyTalkerPipeline, PromptEmbeds

        image = bridge.image_to_uint8(start_image, "start_image")
        audio = audio_features.conditioning
        people = audio.num_tracks
        if faces.num_faces != people:
            raise InputError(f"faces: {faces.num_faces} face(s) for {people} audio input(s); set 'people' on "
                             "AnyTalker Face Masks from AnyTalker Audio Encode")
        if tuple(faces.image_hw) != tuple(image.shape[:2]):
            raise InputError(f"faces were found on a {faces.image_hw[1]}x{faces.image_hw[0]} image but start_image "
                             f"is {image.shape[1]}x{image.shape[0]}; feed the same image to both nodes")
        pipe = AnyTalkerPipeline(dit=None, text_encoder=None, clip_vision=bridge.ClipVisionAdapter(clip_vision),
                                 vae=bridge.VaeAdapter(vae), wav2vec=None, device="cpu", dtype=torch.float32)
        plan = pipe.plan(image.shape[:2], audio.frame_num, max_pixels)
        masks = pipe.prepare_faces(image, people, plan, boxes=None if faces.masks is not None else faces.boxes,
                                   masks=faces.masks)
        prompts = PromptEmbeds(context=text_embeds(positive, "positive"), context_null=text_embeds(negative, "negative"))
        condition = pipe.build_condition(image, masks, audio, plan, prompts)
        return io.NodeOutput(condition, plan.width, plan.height)


def condition_to(condition, device: torch.device, dtype: torch.dtype):
    """A copy of the core ``Condition`` with every tensor on ``device``/``dtype``."""
    def move(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=dtype)

    prompts = dataclasses.replace(condition.prompts, context=move(condition.prompts.context),
                                  context_null=move(condition.prompts.context_null))
    speakers = [dataclasses.replace(s, audio=move(s.audio), face_clip=move(s.face_clip), token_mask=move(s.token_mask))
                for s in condition.speakers]
    return dataclasses.replace(condition, y=move(condition.y), clip_fea=move(condition.clip_fea),
                               speakers=speakers, prompts=prompts)


def check_widths(condition, config) -> None:
    """Clear messages when the encoders do not match the DiT (e.g. a different text encoder)."""
    for what, tensor, want, hint in (
        ("positive", condition.prompts.context, config.text_dim, "umt5_xxl via Load CLIP (type wan)"),
        ("negative", condition.prompts.context_null, config.text_dim, "umt5_xxl via Load CLIP (type wan)"),
        ("clip_vision", condition.clip_fea, config.clip_dim, "clip_vision_h.safetensors"),
    ):
        if tensor.shape[-1] != want:
            raise InputError(f"{what}: embeddings are {tensor.shape[-1]} wide but the AnyTalker model expects "
                             f"{want}; use {hint}")
    for i, s in enumerate(condition.speakers):
        got = tuple(s.audio.shape[-2:])
        want = (config.audio_layers, config.audio_channels)
        if got != want:
            raise InputError(f"audio_features: person {i + 1} has wav2vec2 features {got} (layers, width) but the "
                             f"model expects {want}; use wav2vec2-base-960h")


def fit_text(embeds: torch.Tensor, text_len: int, what: str) -> torch.Tensor:
    if embeds.shape[1] > text_len:
        log.warning("%s: %d text tokens, the model reads %d; the rest is cut", what, embeds.shape[1], text_len)
        return embeds[:, :text_len]
    return embeds


class AnyTalkerSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from anytalker_core.sampling import SOLVERS

        return io.Schema(
            node_id="AnyTalkerSampler",
            display_name="AnyTalker Sampler",
            category="AnyTalker/sampling",
            description="Denoises the whole clip in one pass (flow matching, reference solvers). Decode the "
                        "LATENT with VAE Decode, then Create Video at 24 fps with the mixed audio.",
            inputs=[
                AnyTalkerModelType.Input("model", tooltip="From Load AnyTalker Model."),
                ConditioningType.Input("conditioning", tooltip="From AnyTalker Conditioning."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed (drawn on the CPU: the same seed gives the same video on any "
                                     "device)."),
                io.Int.Input("steps", default=40, min=1, max=200,
                             tooltip="Denoising steps (reference: 40; 20-30 is usually enough)."),
                io.Combo.Input("sampler_name", options=list(SOLVERS), default="unipc",
                               tooltip="unipc (reference default), dpmpp (reference alternative) or euler."),
                io.Float.Input("cfg", default=4.5, min=1.0, max=20.0, step=0.1,
                               tooltip="Guidance for text and audio together (reference: 4.5). Unconditional = "
                                       "negative prompt with silent audio."),
                io.Float.Input("shift", default=0.0, min=0.0, max=20.0, step=0.1, advanced=True,
                               tooltip="Flow shift; 0 = the reference's choice (3.0 up to 832x480, else 5.0)."),
                io.Float.Input("audio_cfg", default=0.0, min=0.0, max=20.0, step=0.1, advanced=True,
                               tooltip="0 = one scale (cfg) for text and audio. Above 0: separate guidance, "
                                       "cfg for text and this for audio (3 model passes per step)."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Wan2.1 latent; decode with VAE Decode.")],
        )

    @classmethod
    def execute(cls, model, conditioning, seed: int = 42, steps: int = 40, sampler_name: str = "unipc",
                cfg: float = 4.5, shift: float = 0.0, audio_cfg: float = 0.0) -> io.NodeOutput:
        import comfy.latent_formats
        import comfy.model_management as mm

        from anytalker_core.attention import set_attention_backend
        from anytalker_core.pipeline import AnyTalkerPipeline

        dit = model.dit
        check_widths(conditioning, dit.config)
        device = mm.get_torch_device()
        condition = condition_to(conditioning, device, model.dtype)
        condition.prompts.context = fit_text(condition.prompts.context, dit.config.text_len, "positive")
        condition.prompts.context_null = fit_text(condition.prompts.context_null, dit.config.text_len, "negative")
        set_attention_backend(model.attention)

        weights = sum(p.numel() * p.element_size() for p in dit.parameters())
        mm.free_memory(weights * 1.3, device)  # room for the DiT plus activations: other models are offloaded
        dit.to(device)
        try:
            pipe = AnyTalkerPipeline(dit, None, None, None, None, device=device, dtype=model.dtype)
            separate = audio_cfg > 0
            latent = pipe.denoise(
                condition, steps=steps, shift=shift or None, sampler=sampler_name, guidance=cfg,
                text_guidance=cfg if separate else None, audio_guidance=audio_cfg if separate else None,
                seed=seed, progress=bridge.progress_callback(steps), should_stop=bridge.interrupt_check)
        finally:
            dit.to(mm.unet_offload_device())
            mm.soft_empty_cache()
        raw = comfy.latent_formats.Wan21().process_out(latent.detach().float().cpu())
        return io.NodeOutput({"samples": raw})
