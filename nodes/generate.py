"""Conditioning assembly and sampling: native text/CLIP-vision/VAE outputs + faces + audio → LATENT, or frames
(chained windows for long clips)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

import numpy as np
import torch
from comfy_api.latest import io

from anytalker_core.constants import MAX_AREA, WINDOW_FRAMES
from anytalker_core.errors import InputError

from . import _bridge as bridge
from .types import AnyTalkerModelType, AudioFeaturesType, ConditioningType, FacesType

log = logging.getLogger(__name__)

MAX_AREA_480P = MAX_AREA


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
                io.Int.Input("window_frames", default=WINDOW_FRAMES, min=0, max=1001, step=4, advanced=True,
                             tooltip="A clip longer than this (4m+1 frames; 81 = 3.4 s) is conditioned one window "
                                     "at a time, for AnyTalker Long Sampler (give it the same or a shorter "
                                     "window): memory stays that of one window. 0 = the whole clip at once "
                                     "(for AnyTalker Sampler's single pass)."),
            ],
            outputs=[
                ConditioningType.Output(display_name="conditioning"),
                io.Int.Output(display_name="width", tooltip="Video width in pixels."),
                io.Int.Output(display_name="height", tooltip="Video height in pixels."),
            ],
        )

    @classmethod
    @bridge.comfyui_messages
    def execute(cls, positive, negative, clip_vision, vae, start_image, faces, audio_features,
                max_pixels: int = MAX_AREA_480P, window_frames: int = WINDOW_FRAMES) -> io.NodeOutput:
        from anytalker_core.generation import stages
        from anytalker_core.generation.types import PromptEmbeds
        from anytalker_core.generation.window_plan import check_window_frames
        from anytalker_core.generation.windows import WindowedCondition, window_inputs

        image = bridge.image_to_uint8(start_image, "start_image")
        audio = audio_features.conditioning
        people = audio.num_tracks
        if faces.num_faces != people:
            raise InputError(f"faces: {faces.num_faces} face(s) for {people} audio input(s); set 'people' on "
                             "AnyTalker Face Masks from AnyTalker Audio Encode")
        if tuple(faces.image_hw) != tuple(image.shape[:2]):
            raise InputError(f"faces were found on a {faces.image_hw[1]}x{faces.image_hw[0]} image but start_image "
                             f"is {image.shape[1]}x{image.shape[0]}; feed the same image to both nodes")
        tick = bridge.stage_ticker(people + 2)  # CLIP of the whole image and of each face, then the VAE encode
        check_window_frames(window_frames)
        plan = stages.plan(image.shape[:2], audio.frame_num, max_pixels)
        cond_plan, cond_audio, windowed = window_inputs(plan, audio, window_frames)
        masks = stages.prepare_faces(None, image, people, cond_plan,
                                     boxes=None if faces.masks is not None else faces.boxes, masks=faces.masks)
        prompts = PromptEmbeds(context=text_embeds(positive, "positive"), context_null=text_embeds(negative, "negative"))
        condition = stages.condition(bridge.ClipVisionAdapter(clip_vision, tick), bridge.VaeAdapter(vae, tick), image,
                                     masks, cond_audio, cond_plan, prompts)
        if windowed:
            condition = WindowedCondition(template=condition, features=audio.windowed)
        return io.NodeOutput(condition, plan.width, plan.height)


def condition_to(condition, device: torch.device, dtype: torch.dtype):
    """A copy of the core ``Conditioning`` with every tensor on ``device``/``dtype``."""
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


def sampling_inputs() -> list:
    """The sampler settings shared by AnyTalker Sampler and AnyTalker Long Sampler."""
    from anytalker_core.sampling import SOLVERS

    return [
        io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Noise seed (drawn on the CPU: the same seed gives the same video on any device)."),
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
    ]


def sampling_kwargs(seed: int, steps: int, sampler_name: str, cfg: float, shift: float, audio_cfg: float) -> dict:
    """The node settings as :func:`anytalker_core.generation.stages.denoise` keyword arguments (with ComfyUI's
    progress/cancel)."""
    separate = audio_cfg > 0
    progress, on_step = bridge.sampling_progress(steps)  # the bar, with a latent preview after each step
    return dict(steps=steps, shift=shift or None, sampler=sampler_name, guidance=cfg,
                text_guidance=cfg if separate else None, audio_guidance=audio_cfg if separate else None,
                seed=seed, progress=progress, on_step=on_step, should_stop=bridge.interrupt_check)


@contextlib.contextmanager
def dit_on_device(model, conditioning) -> Iterator[tuple[object, torch.device]]:
    """Check the conditioning against the DiT, move both to ComfyUI's device for the duration of sampling
    (other models offloaded first) and the DiT back to the offload device afterwards.

    Yields ``(condition on the device, device)``.
    """
    import comfy.model_management as mm

    dit = model.dit
    check_widths(conditioning, dit.config)
    device = mm.get_torch_device()
    condition = condition_to(conditioning, device, model.dtype)
    condition.prompts.context = fit_text(condition.prompts.context, dit.config.text_len, "positive")
    condition.prompts.context_null = fit_text(condition.prompts.context_null, dit.config.text_len, "negative")

    weights = sum(p.numel() * p.element_size() for p in dit.parameters())
    mm.free_memory(weights * 1.3, device)  # room for the DiT plus activations: other models are offloaded
    dit.to(device)
    try:
        yield condition, device
    finally:
        dit.to(mm.unet_offload_device())
        mm.soft_empty_cache()


TRAINING_FRAMES = WINDOW_FRAMES  # the clip length both released models were trained on (3.4 s at 24 fps)


def warn_if_longer_than_training(condition) -> None:
    """One pass over more than the training length drifts and needs memory for the whole clip: say so."""
    frames = (int(condition.y.shape[2]) - 1) * 4 + 1
    if frames > TRAINING_FRAMES:
        log.warning("AnyTalker Sampler: %d frames (%.1f s) in one pass, %.1fx the %d-frame training length: expect "
                    "drift and memory for the whole clip. Use AnyTalker Long Sampler (windows of %d frames) or set "
                    "frame_count on AnyTalker Audio Encode.", frames, frames / 24, frames / TRAINING_FRAMES,
                    TRAINING_FRAMES, TRAINING_FRAMES)


class AnyTalkerSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AnyTalkerSampler",
            display_name="AnyTalker Sampler",
            category="AnyTalker/sampling",
            description="Denoises the whole clip in one pass (flow matching, reference solvers). Decode the "
                        "LATENT with VAE Decode, then Create Video at 24 fps with the mixed audio. For clips "
                        "longer than 81 frames (3.4 s) use AnyTalker Long Sampler.",
            inputs=[
                AnyTalkerModelType.Input("model", tooltip="From Load AnyTalker Model."),
                ConditioningType.Input("conditioning", tooltip="From AnyTalker Conditioning."),
                *sampling_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Wan2.1 latent; decode with VAE Decode.")],
        )

    @classmethod
    @bridge.comfyui_messages
    def execute(cls, model, conditioning, seed: int = 42, steps: int = 40, sampler_name: str = "unipc",
                cfg: float = 4.5, shift: float = 0.0, audio_cfg: float = 0.0) -> io.NodeOutput:
        import comfy.latent_formats

        from anytalker_core.generation.stages import Placement, denoise
        from anytalker_core.generation.windows import WindowedCondition

        if isinstance(conditioning, WindowedCondition):
            raise InputError(f"conditioning: the clip has {conditioning.total_frames} frames, more than window_frames "
                             f"{conditioning.window_frames} on AnyTalker Conditioning; generate it with AnyTalker "
                             "Long Sampler, or set window_frames to 0 there for one pass")
        warn_if_longer_than_training(conditioning)
        with dit_on_device(model, conditioning) as (condition, device):
            latent = denoise(model.dit, condition, placement=Placement(device, model.dtype),
                             **sampling_kwargs(seed, steps, sampler_name, cfg, shift, audio_cfg))
        raw = comfy.latent_formats.Wan21().process_out(latent.detach().float().cpu())
        return io.NodeOutput({"samples": raw})


WORK_FOLDER = ".anytalker_windows"  # in ComfyUI's output folder: finished windows of unfinished long clips


def long_clip_options(window_frames: int, overlap_frames: int, colour_match: bool, overlap_mode: str,
                      overlap_merge: str, clip_reference: str, reanchor_every: int):
    """The :func:`long_clip_inputs` values as the core's checked ``LongClipOptions`` (``overlap_frames`` 0 =
    automatic)."""
    from anytalker_core.generation.window_plan import LongClipOptions

    return LongClipOptions(overlap_frames=overlap_frames or None, overlap_mode=overlap_mode, merge=overlap_merge,
                           colour_match=colour_match, clip_reference=clip_reference,
                           reanchor_every=reanchor_every).checked(window_frames)


def long_clip_inputs() -> list:
    """AnyTalker Long Sampler's long-clip settings (after the sampler settings, so older workflows keep theirs)."""
    from anytalker_core.generation.window_plan import OVERLAP_MERGES
    from anytalker_core.generation.windows import CLIP_REFERENCES, OVERLAP_MODES

    return [
        io.Int.Input("overlap_frames", default=0, min=0, max=497, step=4,
                     tooltip="Motion frames shared by consecutive windows (4k+1, at most half a window): the last "
                             "frames of one window condition the next, so motion carries across the seam. "
                             "0 = automatic (9, or the most a short window allows); 1 = one shared frame."),
        io.Boolean.Input("colour_match", default=True,
                         tooltip="Match each window's colours (CIELAB mean and spread) to the start image, so "
                                 "colours do not drift over minutes."),
        io.Combo.Input("overlap_mode", options=list(OVERLAP_MODES), default="latent", advanced=True,
                       tooltip="latent: the motion frames' latents are pinned at every step (default; the "
                               "conditioning stays what the model was trained on). y: they are known frames in "
                               "the image conditioning (experimental for AnyTalker)."),
        io.Combo.Input("overlap_merge", options=list(OVERLAP_MERGES), default="blend", advanced=True,
                       tooltip="blend: cross-fade the shared frames; drop: keep the earlier window's."),
        io.Combo.Input("clip_reference", options=list(CLIP_REFERENCES), default="start", advanced=True,
                       tooltip="Whole-image CLIP tokens of every window: the start image's (default, against "
                               "identity drift) or each window's first frame."),
        io.Int.Input("reanchor_every", default=0, min=0, max=1000, advanced=True,
                     tooltip="Re-anchor every N-th window on the start image (0 = never)."),
        io.Boolean.Input("resume", default=True, advanced=True,
                         tooltip=f"Keep each finished window in output/{WORK_FOLDER} so that a cancelled or "
                                 "killed run continues where it stopped (same inputs and settings); removed when "
                                 "the clip is done."),
    ]


class AnyTalkerLongSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AnyTalkerLongSampler",
            display_name="AnyTalker Long Sampler",
            category="AnyTalker/sampling",
            description="Generates a clip of any length in overlapping windows of window_frames frames: each "
                        "window starts from the last overlap_frames frames of the one before (seed + window "
                        "index), keeps the start image's identity and is colour-matched to it. Decodes as it "
                        "goes and returns the frames: connect them to Create Video at 24 fps with the mixed "
                        "audio.",
            inputs=[
                AnyTalkerModelType.Input("model", tooltip="From Load AnyTalker Model."),
                ConditioningType.Input("conditioning", tooltip="From AnyTalker Conditioning (the whole audio "
                                                               "timeline)."),
                io.Vae.Input("vae", tooltip="The Wan2.1 VAE given to AnyTalker Conditioning: decodes each window "
                                            "and encodes the frames the next window starts from."),
                io.ClipVision.Input("clip_vision", tooltip="The CLIP vision model given to AnyTalker "
                                                           "Conditioning (used with clip_reference = window)."),
                io.Int.Input("window_frames", default=WINDOW_FRAMES, min=5, max=1001, step=4,
                             tooltip="Frames per window, 4m+1 (81 = 3.4 s, the training length). A clip no "
                                     "longer than this is one pass."),
                *sampling_inputs(),
                *long_clip_inputs(),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="All frames of the clip (24 fps).")],
        )

    @classmethod
    @bridge.comfyui_messages
    def execute(cls, model, conditioning, vae, clip_vision, window_frames: int = WINDOW_FRAMES, seed: int = 42,
                steps: int = 40, sampler_name: str = "unipc", cfg: float = 4.5, shift: float = 0.0,
                audio_cfg: float = 0.0, overlap_frames: int = 0, colour_match: bool = True,
                overlap_mode: str = "latent", overlap_merge: str = "blend", clip_reference: str = "start",
                reanchor_every: int = 0, resume: bool = True) -> io.NodeOutput:
        import os

        import folder_paths

        from anytalker_core.generation.stages import Placement, SamplingModels
        from anytalker_core.generation.window_plan import check_window_frames, needs_windows
        from anytalker_core.generation.window_store import WindowStore
        from anytalker_core.generation.windows import WindowedCondition, run_key_for, run_windows

        window_frames = check_window_frames(window_frames)
        options = long_clip_options(window_frames, overlap_frames, colour_match, overlap_mode, overlap_merge,
                                    clip_reference, reanchor_every)
        if isinstance(conditioning, WindowedCondition):
            if window_frames > conditioning.window_frames:
                raise InputError(f"window_frames {window_frames} is longer than the window_frames "
                                 f"{conditioning.window_frames} AnyTalker Conditioning prepared; set it to at least "
                                 f"{window_frames} there")
            template, features = conditioning.template, conditioning.features
        else:  # conditioned for the whole clip: the windows' template is cut from it (exact: causal VAE)
            template = conditioning
            features = torch.cat([s.audio.detach().float().cpu() for s in conditioning.speakers])
        total = int(features.shape[1])
        kwargs = sampling_kwargs(seed, steps, sampler_name, cfg, shift, audio_cfg)
        if not needs_windows(total, window_frames):  # one pass
            with dit_on_device(model, template) as (condition, device):
                pipe = SamplingModels(model.dit, bridge.ClipVisionAdapter(clip_vision), bridge.VaeAdapter(vae),
                                      Placement(device, model.dtype))
                frames = pipe.decode(pipe.denoise(condition, **kwargs))
            return io.NodeOutput(bridge.uint8_to_image(frames))
        template = template.window(0, window_frames)
        chunks: list[np.ndarray] = []
        with dit_on_device(model, template) as (condition, device):
            pipe = SamplingModels(model.dit, bridge.ClipVisionAdapter(clip_vision), bridge.VaeAdapter(vae),
                                  Placement(device, model.dtype))
            store = None
            if resume:
                sampling = {k: v for k, v in kwargs.items()
                            if k not in ("seed", "steps", "progress", "on_step", "should_stop")}
                key, described = run_key_for(pipe, condition, features, total, window_frames, options, steps, seed,
                                             sampling)
                store = WindowStore(os.path.join(folder_paths.get_output_directory(), WORK_FOLDER), key, described)
            # run_windows reports progress as (done, windows x steps): the bar takes that total
            run_windows(pipe, condition, features, total, window_frames, chunks.append, options=options,
                        store=store, **kwargs)
        if store is not None:
            store.remove()
        return io.NodeOutput(bridge.uint8_to_image(np.concatenate(chunks, axis=0)))
