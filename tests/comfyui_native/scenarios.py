"""Measurements of the native route inside a real ComfyUI, run by ComfyUI's own Python.

    cd $COMFYUI_PATH && $COMFYUI_PYTHON <repo>/tests/comfyui_native/scenarios.py OUT.json SCENARIO...

Imports ComfyUI's modules in-process (``--cpu``), loads this pack as a package (ComfyUI has its own
top-level ``nodes`` module), builds tiny random AnyTalker checkpoints of both AFCA variants in the released
key layout and formats, runs each scenario through ComfyUI's real nodes (KSampler, LoraLoaderModelOnly,
EasyCache, TorchCompileModel, SamplerCustomAdvanced...) and writes the measured numbers as JSON. The pytest
side (tests/test_native_route.py) checks them. A scenario that raises is reported with its error.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.getcwd())  # the ComfyUI checkout (cwd), before anything named `nodes`

import comfy.options

comfy.options.enable_args_parsing(False)
from comfy.cli_args import LatentPreviewMethod, args

args.cpu = True

import comfy.latent_formats
import comfy.model_management as mm
import comfy.sd
import comfy.utils
import folder_paths
import torch

import nodes as comfy_nodes


def load_pack():
    spec = importlib.util.spec_from_file_location("anytalker_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["anytalker_pack"] = pack
    spec.loader.exec_module(pack)
    return pack


load_pack()
from anytalker_pack.nodes.native import weights
from anytalker_pack.nodes.native.conditioning import to_native
from anytalker_pack.nodes.native.nodes import AnyTalkerNativeGuider

from anytalker_core.generation import stages
from anytalker_core.generation.types import Conditioning, PromptEmbeds, VideoPlan
from anytalker_core.model.checkpoint import load_dit, read_state_dict
from anytalker_core.model.speaker import Speaker
from anytalker_core.testing.demo import DemoWidths, make_demo_dit

log = logging.getLogger("native_scenarios")
WAN21 = comfy.latent_formats.Wan21()
SEED, STEPS, SHIFT, CFG = 7, 4, 3.0, 4.5


# ------------------------------------------------------------------------------------ tiny models
def tiny_checkpoints(tmp: Path) -> dict[str, Path]:
    """fused: our .safetensors (config in metadata); legacy: the released format, ``{'model': sd}`` .pth
    beside a reference-style ``config_af2v_14B.json`` (so wav2vec2-base's real 12 x 768 features). Both
    ComfyUI-sized where ComfyUI fixes a width (CLIP 1280, 128-wide heads)."""
    fused = make_demo_dit(tmp / "anytalker_fused_tiny.safetensors",
                          DemoWidths(clip_dim=1280, dit_dim=256, afca="fused", seed=1))
    legacy_st = make_demo_dit(tmp / "legacy_tmp.safetensors", DemoWidths(clip_dim=1280, dit_dim=256, afca="legacy", seed=2,
                                                                              audio_layers=12, audio_channels=768))
    sd, hints = read_state_dict(legacy_st)
    legacy_dir = tmp / "release14b"
    legacy_dir.mkdir()
    legacy = legacy_dir / "14B-multi-tiny.pth"
    torch.save({"model": sd}, legacy)
    reference_config = {"model_type": "a2v_af", "legacy_audio_cross_attn": True, "dim": hints["dim"],
                        "num_heads": hints["num_heads"], "num_layers": hints["num_layers"], "ffn_dim": hints["ffn_dim"],
                        "in_dim": 36, "out_dim": 16, "text_len": 512, "eps": 1e-6, "freq_dim": 256,
                        "context_tokens": hints["audio_context_tokens"], "audio_output_dim": hints["audio_output_dim"]}
    (legacy_dir / "config_af2v_14B.json").write_text(json.dumps(reference_config))
    legacy_st.unlink()
    return {"fused": fused, "legacy": legacy}


def random_condition(cfg, people: int = 2, frames: int = 9, seed: int = 0) -> Conditioning:
    """Random DiT inputs of the core's shapes (64x64 video, ``frames`` frames)."""
    g = torch.Generator().manual_seed(seed)
    plan = VideoPlan(height=64, width=64, frame_num=frames)
    f, h, w = plan.latent_frames, 8, 8
    ymask = torch.ones(1, 4, f, h, w)
    ymask[:, :, 1:] = torch.rand(1, 4, f - 1, h, w, generator=g)
    y = torch.cat([ymask, torch.randn(1, 16, f, h, w, generator=g)], 1)
    speakers = [Speaker(audio=torch.randn(1, frames, 5, cfg.audio_layers, cfg.audio_channels, generator=g),
                        face_clip=torch.randn(1, 257, cfg.clip_dim, generator=g),
                        token_mask=torch.rand(1, f, 4, 4, generator=g)) for _ in range(people)]
    prompts = PromptEmbeds(context=torch.randn(1, 20, cfg.text_dim, generator=g),
                           context_null=torch.randn(1, 20, cfg.text_dim, generator=g))
    return Conditioning(y=y, clip_fea=torch.randn(1, 257, cfg.clip_dim, generator=g), speakers=speakers,
                     prompts=prompts, plan=plan)


def standalone(path: Path, condition: Conditioning, **kw) -> torch.Tensor:
    """The standalone pipeline's latent (the core DiT, euler, the reference's guidance)."""
    return stages.denoise(load_dit(path), condition, steps=STEPS, shift=SHIFT, sampler="euler", seed=SEED, **kw)


def shifted(model):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    return ModelSamplingSD3().patch(model, SHIFT)[0]


def native_inputs(model, condition: Conditioning):
    prompts = condition.prompts
    return to_native(shifted(model), condition, [[prompts.context, {}]], [[prompts.context_null, {}]])


def ksampler(model, condition: Conditioning, steps: int = STEPS, cfg: float = CFG) -> torch.Tensor:
    """KSampler (euler, simple) → the latent in the DiT's normalised space (as the core returns it)."""
    patched, pos, neg, latent = native_inputs(model, condition)
    out = comfy_nodes.KSampler().sample(patched, SEED, steps, cfg, "euler", "simple", pos, neg, latent)[0]
    return WAN21.process_in(out["samples"])


def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    return {"max_abs_diff": float((a - b).abs().max()), "scale": float(b.abs().max())}


# ------------------------------------------------------------------------------------ scenarios
def s_parity(ctx) -> dict:
    """Same weights, inputs, seed and solver: native KSampler vs the standalone pipeline, both variants."""
    out = {}
    for variant, path in ctx["ckpt"].items():
        model = weights.load_native_model(path)
        cfg = model.model.diffusion_model.anytalker_config
        cond = random_condition(cfg)
        native = ksampler(model, cond)
        ref = standalone(path, cond)
        silent = ksampler(model, cond_without_audio(cond))
        out[variant] = {**diff(native, ref), "afca": cfg.afca, "format": path.suffix,
                        "audio_effect": float((native - silent).abs().max()),
                        "loaded_keys": len(model.model.diffusion_model.state_dict()),
                        "file_keys": len(read_state_dict(path)[0])}
    return out


def cond_without_audio(cond: Conditioning) -> Conditioning:
    import dataclasses

    return dataclasses.replace(cond, speakers=[s.without_audio() for s in cond.speakers])


def lora_file(path: Path, sd: dict, targets: list[str], rank: int = 4, alpha: float = 2.0) -> dict:
    """A LoRA in the common ``diffusion_model.<key>.lora_up/lora_down/alpha`` layout; returns the deltas."""
    g = torch.Generator().manual_seed(3)
    tensors, deltas = {}, {}
    for key in targets:
        w = sd[key + ".weight"]
        down = torch.randn(rank, w.shape[1], generator=g) * 0.1
        up = torch.randn(w.shape[0], rank, generator=g) * 0.1
        tensors[f"diffusion_model.{key}.lora_down.weight"] = down
        tensors[f"diffusion_model.{key}.lora_up.weight"] = up
        tensors[f"diffusion_model.{key}.alpha"] = torch.tensor(alpha)
        deltas[key + ".weight"] = (up @ down) * (alpha / rank)
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return deltas


def s_lora(ctx) -> dict:
    """LoraLoaderModelOnly on the native model == the same LoRA merged into the checkpoint's weights."""
    from anytalker_core.model.checkpoint import save_dit

    out = {}
    loras = ctx["tmp"] / "loras"
    loras.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(loras))
    strength = 0.8
    for variant, path in ctx["ckpt"].items():
        sd, _ = read_state_dict(path)
        afca_layer = "blocks.1.cross_attn.k_audio" if variant == "fused" else "blocks.1.audio_cross_attn.q_linear"
        targets = ["blocks.0.self_attn.q", "blocks.1.ffn.0", afca_layer]
        name = f"tiny_{variant}_lora.safetensors"
        deltas = lora_file(loras / name, sd, targets)
        dit = load_dit(path)
        with torch.no_grad():
            for key, delta in deltas.items():
                dit.get_parameter(key).add_(strength * delta)
        merged = save_dit(dit, ctx["tmp"] / f"merged_{variant}.safetensors")
        model = weights.load_native_model(path)
        cond = random_condition(model.model.diffusion_model.anytalker_config, seed=5)
        with_lora = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, strength)[0]
        a = ksampler(with_lora, cond)
        b = ksampler(weights.load_native_model(merged), cond)
        plain = ksampler(model, cond)
        out[variant] = {**diff(a, b), "lora_effect": float((a - plain).abs().max()),
                        "patched_keys": sorted(k[0] if isinstance(k, tuple) else k for k in with_lora.patches)}
    return out


def s_memory(ctx) -> dict:
    """ComfyUI reports the model loaded during/after sampling and unloads it when memory is needed."""
    model = weights.load_native_model(ctx["ckpt"]["fused"])
    cond = random_condition(model.model.diffusion_model.anytalker_config)
    patched, pos, neg, latent = native_inputs(model, cond)
    comfy_nodes.KSampler().sample(patched, SEED, 2, CFG, "euler", "simple", pos, neg, latent)
    loaded = [m for m in mm.loaded_models() if m.model is model.model]
    size = model.model_size()
    anytalker_bytes = sum(p.numel() * p.element_size() for n, p in model.model.diffusion_model.named_parameters()
                          if n in weights.anytalker_keys(model.model.diffusion_model.anytalker_config))
    mm.free_memory(1e30, mm.get_torch_device())  # what ComfyUI does when another model needs the memory
    after = [m for m in mm.loaded_models() if m.model is model.model]
    return {"loaded_after_sampling": len(loaded), "loaded_after_free": len(after), "model_size": size,
            "anytalker_bytes": anytalker_bytes}


def s_lowvram(ctx) -> dict:
    """ComfyUI's partial (lowvram) loading with a weight budget below the model size still samples, with
    the same result; a LoRA is then applied at run time by ComfyUI's lowvram weight patches."""
    path = ctx["ckpt"]["legacy"]
    loras = ctx["tmp"] / "loras_lowvram"
    loras.mkdir()
    folder_paths.add_model_folder_path("loras", str(loras))
    lora_file(loras / "lowvram_lora.safetensors", read_state_dict(path)[0],
              ["blocks.1.self_attn.q", "blocks.1.audio_cross_attn.q_linear", "blocks.1.ffn.0"])
    model = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(
        weights.load_native_model(path), "lowvram_lora.safetensors", 0.8)[0]
    cond = random_condition(model.model.diffusion_model.anytalker_config, seed=11)
    full = ksampler(model, cond)
    mm.free_memory(1e30, mm.get_torch_device())
    budget = int(model.model_size() * 0.02)
    original = mm.load_models_gpu
    seen = {}

    def load_with_budget(models, *a, **kw):
        # ComfyUI on a GPU computes this budget from free VRAM; on the CPU it always loads fully, so the
        # budget is imposed here and ComfyUI's own LoadedModel/ModelPatcher partial-load path does the rest.
        for m in models:
            loaded = mm.LoadedModel(m)
            loaded.model_load(lowvram_model_memory=budget)
            mm.current_loaded_models.insert(0, loaded)
            if m.model is model.model:
                seen.update(loaded_size=m.loaded_size(), lowvram=bool(m.model.model_lowvram),
                            lowvram_patches=m.lowvram_patch_counter())
    mm.load_models_gpu = load_with_budget
    try:
        partial = ksampler(model, cond)
    finally:
        mm.load_models_gpu = original
        mm.free_memory(1e30, mm.get_torch_device())
    return {**diff(partial, full), **seen, "budget": budget, "model_size": model.model_size()}


def s_easycache(ctx) -> dict:
    """ComfyUI's EasyCache node on the native model: it skips steps and stays close to the uncached run."""
    from comfy_extras.nodes_easycache import EasyCacheNode

    model = weights.load_native_model(ctx["ckpt"]["fused"])
    cond = random_condition(model.model.diffusion_model.anytalker_config, seed=13)
    plain = ksampler(model, cond, steps=10)
    records = []
    handler = _Capture(records)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        cached_model = EasyCacheNode.execute(model, reuse_threshold=0.5, start_percent=0.1, end_percent=0.95,
                                             verbose=True).args[0]
        cached = ksampler(cached_model, cond, steps=10)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    import re

    summary = [m for r in records if (m := re.search(r"EasyCache - skipped (\d+)/(\d+) steps", r))]
    return {**diff(cached, plain), "skipped_steps": int(summary[-1][1]) if summary else 0,
            "total_steps": int(summary[-1][2]) if summary else 0}


class _Capture(logging.Handler):
    def __init__(self, sink):
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record):
        self.sink.append(record.getMessage())


def s_preview_interrupt(ctx) -> dict:
    """Latent previews (Latent2RGB) arrive for every step; interrupting after step 2 stops sampling."""
    model = weights.load_native_model(ctx["ckpt"]["fused"])
    cond = random_condition(model.model.diffusion_model.anytalker_config)
    previews = []
    args.preview_method = LatentPreviewMethod.Latent2RGB

    def hook(value, total, preview, node_id=None):
        if preview is not None:
            previews.append((value, total, preview[1].size))

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        ksampler(model, cond, steps=3)
        steps_seen = []

        def stop_after_two(value, total, preview, node_id=None):
            steps_seen.append(value)
            if value >= 2:
                mm.interrupt_current_processing(True)

        comfy.utils.set_progress_bar_global_hook(stop_after_two)
        interrupted = None
        try:
            ksampler(model, cond, steps=6)
        except mm.InterruptProcessingException:
            interrupted = "InterruptProcessingException"
        finally:
            mm.interrupt_current_processing(False)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        args.preview_method = LatentPreviewMethod.NoPreviews
    return {"previews": [list(p[:2]) + [list(p[2])] for p in previews], "interrupted": interrupted,
            "steps_before_interrupt": max(steps_seen) if steps_seen else 0}


def s_pack_previews(ctx) -> dict:
    """The pack's own AnyTalker Sampler sends ComfyUI latent previews (Latent2RGB here) after every step."""
    from anytalker_pack.nodes._bridge import AnyTalkerModel
    from anytalker_pack.nodes.generate import AnyTalkerSampler

    dit = load_dit(ctx["ckpt"]["fused"])
    cond = random_condition(dit.config)
    previews = []
    args.preview_method = LatentPreviewMethod.Latent2RGB

    def hook(value, total, preview, node_id=None):
        if preview is not None:
            previews.append((value, total, preview[0], preview[1].size))

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        AnyTalkerSampler.execute(model=AnyTalkerModel(dit=dit, dtype=torch.float32, attention="sdpa", name="tiny"),
                                 conditioning=cond, seed=SEED, steps=3, sampler_name="euler", cfg=CFG, shift=SHIFT)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        args.preview_method = LatentPreviewMethod.NoPreviews
    return {"previews": [[p[0], p[1], p[2], list(p[3])] for p in previews]}


def custom_advanced(model, pos, neg, latent, text_cfg: float, audio_cfg: float) -> torch.Tensor:
    """SamplerCustomAdvanced with AnyTalker Text/Audio Guider, euler, simple schedule, RandomNoise(SEED)."""
    from comfy_extras.nodes_custom_sampler import (
        BasicScheduler,
        KSamplerSelect,
        RandomNoise,
        SamplerCustomAdvanced,
    )

    guider = AnyTalkerNativeGuider.execute(model, pos, neg, text_cfg, audio_cfg).args[0]
    sampler = KSamplerSelect.execute("euler").args[0]
    sigmas = BasicScheduler.execute(model, "simple", STEPS, 1.0).args[0]
    noise = RandomNoise.execute(SEED).args[0]
    result = SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent).args[0]
    return WAN21.process_in(result["samples"])


def s_guider(ctx) -> dict:
    """AnyTalker Text/Audio Guider with SamplerCustomAdvanced: equal scales == KSampler's cfg; separate
    scales == the standalone pipeline's separate text/audio guidance."""

    out = {}
    for variant, path in ctx["ckpt"].items():
        model = weights.load_native_model(path)
        cond = random_condition(model.model.diffusion_model.anytalker_config, seed=17)
        patched, pos, neg, latent = native_inputs(model, cond)

        same = custom_advanced(patched, pos, neg, latent, CFG, CFG)
        ks = ksampler(model, cond)
        separate = custom_advanced(patched, pos, neg, latent, 4.0, 6.0)
        ref = standalone(path, cond, text_guidance=4.0, audio_guidance=6.0)
        out[variant] = {"equal_vs_ksampler": diff(same, ks), "separate_vs_standalone": diff(separate, ref),
                        "separate_effect": float((separate - same).abs().max())}
    return out


def s_compile(ctx) -> dict:
    """TorchCompileModel (inductor) on the native model samples and matches the eager result."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    model = weights.load_native_model(ctx["ckpt"]["fused"])
    cond = random_condition(model.model.diffusion_model.anytalker_config, seed=19)
    eager = ksampler(model, cond, steps=2)
    compiled_model = TorchCompileModel.execute(model, "inductor").args[0]
    started = time.monotonic()
    compiled = ksampler(compiled_model, cond, steps=2)
    return {**diff(compiled, eager), "seconds": time.monotonic() - started}


def s_errors(ctx) -> dict:
    """Clear errors: a plain Wan2.1 checkpoint, and a plain MODEL given to the conditioning."""
    from anytalker_core.errors import AnyTalkerError

    sd, _ = read_state_dict(ctx["ckpt"]["fused"])
    plain = {k: v for k, v in sd.items() if k not in weights.anytalker_keys(load_dit(ctx["ckpt"]["fused"]).config)}
    from safetensors.torch import save_file

    path = ctx["tmp"] / "plain_wan.safetensors"
    save_file(plain, str(path))
    messages = {}
    try:
        weights.load_native_model(path)
    except AnyTalkerError as exc:
        messages["plain_checkpoint"] = str(exc)
    stock = comfy.sd.load_diffusion_model_state_dict(dict(plain), metadata={"config": json.dumps(
        {"transformer": {"num_heads": 2, "text_dim": 32}})})
    try:
        native_inputs(stock, random_condition(load_dit(ctx["ckpt"]["fused"]).config))
    except ValueError as exc:
        messages["plain_model"] = str(exc)
    return messages


def s_fp8(ctx) -> dict:
    """Load Diffusion Model's fp8 weight option: every weight (trunk and AFCA) stored in fp8, computed in
    ComfyUI's manual-cast dtype; the result stays close to the full-precision one."""
    out = {}
    for variant, path in ctx["ckpt"].items():
        full_model = weights.load_native_model(path)
        cond = random_condition(full_model.model.diffusion_model.anytalker_config, seed=23)
        full = ksampler(full_model, cond)
        fp8 = weights.load_native_model(path, model_options={"dtype": torch.float8_e4m3fn})
        dm = fp8.model.diffusion_model
        afca = dm.blocks[0].cross_attn.k_audio if variant == "fused" else dm.blocks[0].audio_cross_attn.q_linear
        result = ksampler(fp8, cond)
        out[variant] = {**diff(result, full), "trunk_dtype": str(dm.blocks[0].self_attn.q.weight.dtype),
                        "afca_dtype": str(afca.weight.dtype), "compute_dtype": str(fp8.model.get_dtype_inference()),
                        "finite": bool(torch.isfinite(result).all())}
    return out


# ------------------------------------------------------------------------------------ long clips
LONG = {"frames": 25, "window": 13, "overlap": 5}  # 3 windows: 0-12, 8-20, 16-24 (the last one shortened)


def long_inputs(ctx, cfg, people: int = 2):
    """ComfyUI objects for the long-clip nodes: CONDITIONING, a tiny CLIP vision (ComfyUI's class, through
    the test loader), a tiny Wan VAE (ComfyUI's VAE), a start image, boxes and random wav2vec2 features."""
    import numpy as np
    from anytalker_pack.nodes._bridge import AudioPayload, FaceSelection

    from anytalker_core.audio.timeline import AudioConditioning
    from anytalker_core.audio.windowed import WindowedFeatures
    from anytalker_core.encoders import make_tiny_clip_vision, make_tiny_vae

    if "long_models" not in ctx:
        spec = importlib.util.spec_from_file_location("anytalker_test_nodes",
                                                      REPO / "tests" / "comfyui_test_nodes" / "__init__.py")
        test_nodes = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(test_nodes)
        clip_path = make_tiny_clip_vision(ctx["tmp"] / "clip_vision_tiny.safetensors", hidden_size=1280, num_layers=2,
                                          intermediate_size=64)
        vae_path = make_tiny_vae(ctx["tmp"] / "wan_vae_tiny.safetensors")
        ctx["long_models"] = (test_nodes.AnyTalkerTestClipVisionLoader.execute(str(clip_path)).args[0],
                              comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vae_path))))
    clip_vision, vae = ctx["long_models"]
    g = torch.Generator().manual_seed(5)
    h, w = 64, 64 * people
    ramp = torch.linspace(0, 1, w)[None, :, None] * torch.tensor([0.8, 0.4, 0.2]) + 0.1
    image = (ramp.expand(h, w, 3) + 0.1 * torch.rand(h, w, 3, generator=g)).clamp(0, 1)[None]
    boxes = np.array([[64 * i + 16, 12, 64 * i + 48, 44] for i in range(people)], np.float32)
    frames = LONG["frames"]
    dense = torch.randn(people, frames, 5, cfg.audio_layers, cfg.audio_channels, generator=g)
    audio = AudioConditioning(windowed=WindowedFeatures.from_dense(dense),
                              frame_num=frames, mixed=torch.zeros(frames * 16000 // 24), fps=24.0, mode="pad")
    positive = [[torch.randn(1, 20, cfg.text_dim, generator=g), {}]]
    negative = [[torch.randn(1, 20, cfg.text_dim, generator=g), {}]]
    return {"positive": positive, "negative": negative, "clip_vision": clip_vision, "vae": vae, "start_image": image,
                "faces": FaceSelection(boxes=boxes, masks=None, image_hw=(h, w), source="boxes"),
                "audio_features": AudioPayload(conditioning=audio)}


def native_long(model, inputs: dict, **kw):
    """AnyTalker Long Sampler (native) on a shifted MODEL: euler, simple schedule, the LONG windows."""
    from anytalker_pack.nodes.native.nodes import AnyTalkerNativeLongSampler

    settings = {"window_frames": LONG["window"], "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
                    "scheduler": "simple", "overlap_frames": LONG["overlap"], "resume": False, "max_pixels": 64 * 128}
    settings.update(kw)
    return AnyTalkerNativeLongSampler.execute(shifted(model), **inputs, **settings).args[0]


class _Recorder:
    """Wraps a stages class's ``denoise`` to record each window's audio, pinned frames and latent."""

    def __init__(self, cls):
        self.cls, self.calls = cls, []

    def __enter__(self):
        original = self.original = self.cls.denoise
        calls = self.calls

        def denoise(stages_self, condition, **kw):
            latent = original(stages_self, condition, **kw)
            known = kw.get("known")
            calls.append({"audio": [s.audio.detach().float().cpu() for s in condition.speakers],
                          "known": None if known is None else [known.frames.start, known.frames.stop],
                          "latent": latent.detach().float().cpu(), "condition": condition, "known_latents": known,
                          "seed": kw["seed"]})
            return latent

        self.cls.denoise = denoise
        return self

    def __exit__(self, *exc):
        self.cls.denoise = self.original


def s_long_clip(ctx) -> dict:
    """The native long clip (ComfyUI's sampler, known latents pinned by its noise mask) against the core's
    run_windows (the core DiT and sampler, the same VAE and CLIP vision objects): 2 people, 25 frames in 3
    windows of 13 overlapping by 5, both AFCA variants; plus progress over all windows, Cancel, resume."""
    import numpy as np
    from anytalker_pack.nodes import _bridge as bridge
    from anytalker_pack.nodes.generate import AnyTalkerConditioning
    from anytalker_pack.nodes.native.long_clip import NativeStages

    from anytalker_core.generation.window_plan import LongClipOptions, plan_windows
    from anytalker_core.generation.windows import run_windows

    out = {}
    for variant, path in ctx["ckpt"].items():
        model = weights.load_native_model(path)
        cfg = model.model.diffusion_model.anytalker_config
        inputs = long_inputs(ctx, cfg)
        with _Recorder(NativeStages) as rec_native:
            native = bridge.frames_to_uint8(native_long(model, inputs))
        condition = AnyTalkerConditioning.execute(**inputs, max_pixels=64 * 128,
                                                  window_frames=LONG["window"]).args[0]
        core_stages = stages.SamplingModels(load_dit(path), bridge.ClipVisionAdapter(inputs["clip_vision"]),
                                            bridge.VaeAdapter(inputs["vae"]))
        chunks = []
        with _Recorder(stages.SamplingModels) as rec_core:
            run_windows(core_stages, condition.template, condition.features, LONG["frames"], LONG["window"],
                        chunks.append, options=LongClipOptions(overlap_frames=LONG["overlap"]), steps=STEPS,
                        seed=SEED, shift=SHIFT, sampler="euler", guidance=CFG)
        core = np.concatenate(chunks)
        # each native window against the core's sampling of the very same window inputs (its motion latents
        # included): what remains is the sampler arithmetic, not the uint8 rounding of the decoded seams
        same_inputs = [float((c["latent"] - core_stages.denoise(c["condition"], steps=STEPS, seed=c["seed"],
                                                                known=c["known_latents"], shift=SHIFT,
                                                                sampler="euler", guidance=CFG)).abs().max())
                       for c in rec_native.calls]
        plan = plan_windows(LONG["frames"], LONG["window"], LONG["overlap"])
        features = inputs["audio_features"].conditioning.features
        level = np.abs(native.astype(np.int16) - core.astype(np.int16))
        out[variant] = {
            "frames": int(native.shape[0]), "core_frames": int(core.shape[0]), "size": list(native.shape[1:3]),
            "windows": len(rec_native.calls), "plan_windows": len(plan),
            "latent_max_abs_diff": [float((a["latent"] - b["latent"]).abs().max())
                                    for a, b in zip(rec_native.calls, rec_core.calls)],
            "same_inputs_latent_max_abs_diff": same_inputs,
            "latent_scale": max(float(c["latent"].abs().max()) for c in rec_core.calls),
            "frame_max_level_diff": int(level.max()), "frame_mean_level_diff": float(level.mean()),
            "known": [c["known"] for c in rec_native.calls],
            "plan_known": [[0, w.known_latent_frames] if w.index else None for w in plan],
            "audio_is_own_span": [all(torch.equal(a, features[i:i + 1, w.start:w.end]) for i, a in enumerate(c["audio"]))
                                  for c, w in zip(rec_native.calls, plan)],
            "window_lengths": [int(c["latent"].shape[2]) for c in rec_native.calls],
            "plan_latent_frames": [w.latent_frames for w in plan],
        }
        if variant == "fused":
            # a clip no longer than window_frames: one pass, as the pack's Long Sampler (no seams, no colour match)
            one = bridge.frames_to_uint8(native_long(model, inputs, window_frames=29))
            whole = AnyTalkerConditioning.execute(**inputs, max_pixels=64 * 128, window_frames=0).args[0]
            ref = core_stages.decode(core_stages.denoise(whole, steps=STEPS, seed=SEED, shift=SHIFT, sampler="euler",
                                                         guidance=CFG))
            out[variant]["one_pass"] = {"frames": int(one.shape[0]), "max_level_diff": int(
                np.abs(one.astype(np.int16) - ref.astype(np.int16)).max())}
            plain = bridge.frames_to_uint8(native_long(model, inputs, overlap_frames=1, colour_match=False))
            out[variant]["one_shared_frame_mean_level_diff"] = float(
                np.abs(plain.astype(np.int16) - core.astype(np.int16)).mean())
            out[variant].update(long_progress_cancel_resume(model, inputs, native))
    return out


def long_progress_cancel_resume(model, inputs: dict, expected) -> dict:
    """One progress bar over all windows x steps; Cancel in window 2 stops the run; the re-run resumes after
    window 1 (its progress starts at STEPS) and gives the uninterrupted result."""
    import numpy as np
    from anytalker_pack.nodes import _bridge as bridge

    seen = []
    windows = 3

    def record(value, total, preview, node_id=None):
        if total == windows * STEPS:  # the sampler's bar (the conditioning's stage bar has its own total)
            seen.append((value, total))

    comfy.utils.set_progress_bar_global_hook(record)
    try:
        native_long(model, inputs, resume=True)
        full = list(seen)
        seen.clear()

        def cancel_in_window_two(value, total, preview, node_id=None):
            record(value, total, preview)
            if total == windows * STEPS and value == STEPS + 1:
                mm.interrupt_current_processing(True)

        comfy.utils.set_progress_bar_global_hook(cancel_in_window_two)
        interrupted = None
        try:
            native_long(model, inputs, resume=True)
        except mm.InterruptProcessingException:
            interrupted = "InterruptProcessingException"
        finally:
            mm.interrupt_current_processing(False)
        cancelled = list(seen)
        work = Path(folder_paths.get_output_directory()) / ".anytalker_windows"
        kept = sorted(p.name for p in work.glob("*/window_*.npz")) if work.exists() else []
        seen.clear()
        comfy.utils.set_progress_bar_global_hook(record)
        resumed = bridge.frames_to_uint8(native_long(model, inputs, resume=True))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    return {"progress_full": full, "progress_cancelled": cancelled, "interrupted": interrupted,
            "kept_after_cancel": kept, "progress_resumed": seen,
            "resumed_equals_full": bool(np.array_equal(resumed, expected)),
            "work_folder_left": work.exists() and any(work.iterdir())}


SCENARIOS = {"parity": s_parity, "fp8": s_fp8, "lora": s_lora, "memory": s_memory, "lowvram": s_lowvram,
             "easycache": s_easycache, "preview_interrupt": s_preview_interrupt, "pack_previews": s_pack_previews, "guider": s_guider,
             "compile": s_compile, "errors": s_errors, "long_clip": s_long_clip}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    out_path, names = Path(argv[0]), argv[1:] or list(SCENARIOS)
    torch.set_num_threads(1)  # tiny tensors: more threads only spin on a shared CI machine
    results = {}
    with tempfile.TemporaryDirectory(prefix="anytalker_native_") as tmp:
        tmp = Path(tmp)
        folder_paths.set_output_directory(str(tmp / "output"))
        ctx = {"tmp": tmp, "ckpt": tiny_checkpoints(tmp)}
        for name in names:
            started = time.monotonic()
            try:
                with torch.no_grad():
                    results[name] = SCENARIOS[name](ctx)
            except Exception:  # noqa: BLE001 - reported to the test, which fails with the traceback
                results[name] = {"error": traceback.format_exc()}
            results[name]["_seconds"] = round(time.monotonic() - started, 1)
            log.warning("scenario %s: %.1f s", name, time.monotonic() - started)
    out_path.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
