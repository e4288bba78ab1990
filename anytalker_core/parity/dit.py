"""Fixture runner for the DiT groups ``dit_af`` (fused AFCA) and ``dit_legacy``.

Loads the fixture's checkpoint (the released ``.pth`` format) with :func:`load_dit`, runs the shared
inputs (``dit_inputs``) through this project's model for every output the fixture stores
(``out_n{N}``, ``out_n{N}_zero_audio``, ``out_n1``...) and compares them and the debug intermediates.
All sizes (identities, frames, dims) come from the fixture files.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from . import Comparison, Fixture, compare, compare_exact, load_fixture

_DEFAULT_TOL = (2e-5, 1e-5)


def _inputs(fixture: Fixture) -> dict[str, torch.Tensor]:
    name = fixture.meta.get("inputs", "dit_inputs.safetensors").split()[0]
    inputs = load_fixture(fixture.sibling(Path(name).with_suffix(".json").name))
    return inputs.tensors


def _checkpoint_paths(fixture: Fixture) -> tuple[Path, Path | None]:
    ckpt = fixture.meta.get("checkpoint", {})
    weights = fixture.sibling(ckpt.get("file", f"{fixture.group}.pth"))
    config = ckpt.get("config", "").split()[0] if ckpt.get("config") else None
    return weights, (fixture.sibling(config) if config else None)


def _speakers(inp: dict[str, torch.Tensor], n: int, zero_audio: bool):
    from ..model.speaker import Speaker

    speakers = []
    for i in range(n):
        audio = inp["audio_features"][i][None]
        speakers.append(Speaker(audio=torch.zeros_like(audio) if zero_audio else audio,
                                face_clip=inp["face_clip_tokens"][i],
                                token_mask=inp["face_token_mask_grid"][i][None]))
    return speakers


def _capture_debug(model) -> tuple[dict[str, torch.Tensor], list]:
    """Forward hooks recording the reference's ``dbg_*`` intermediates."""
    store: dict[str, torch.Tensor] = {}
    hooks = []

    def keep(name, fn=lambda out: out):
        def hook(_module, _inputs, output):
            store[name] = fn(output).detach().float().clone()
        return hook

    hooks.append(model.patch_embedding.register_forward_hook(keep("dbg_patch_embedding")))
    hooks.append(model.time_embedding.register_forward_hook(keep("dbg_time_embedding")))
    hooks.append(model.time_projection.register_forward_hook(keep("dbg_time_projection")))
    hooks.append(model.text_embedding.register_forward_hook(keep("dbg_text_embedding")))
    hooks.append(model.img_emb.register_forward_hook(keep("dbg_img_emb")))
    for k, block in enumerate(model.blocks):
        hooks.append(block.register_forward_hook(keep(f"dbg_block{k}_out")))
    hooks.append(model.head.register_forward_hook(keep("dbg_head_out")))
    counters = {"face": 0, "audio": 0}
    audio_name = "dbg_audio_emb" if model.config.afca == "fused" else "dbg_audio_proj"
    audio_module = model.audio_emb if model.config.afca == "fused" else model.audio_proj

    def numbered(kind, prefix):
        def hook(_module, _inputs, output):
            store[f"{prefix}_{counters[kind]}"] = output.detach().float().clone()
            counters[kind] += 1
        return hook

    hooks.append(model.audio_ref_emb.register_forward_hook(numbered("face", "dbg_face_emb")))
    hooks.append(audio_module.register_forward_hook(numbered("audio", audio_name)))
    return store, hooks


def run(fixture: Fixture) -> list[Comparison]:
    from ..model.afca import fused_visibility_mask
    from ..model.checkpoint import build_dit, find_config, read_state_dict, resolve_config

    inp = _inputs(fixture)
    weights, config_path = _checkpoint_paths(fixture)
    config_path = config_path or find_config(weights)
    sd, hints = read_state_dict(weights)
    # The reference config has no wav2vec2 sizes; the fixture's own audio features give them.
    window, layers, channels = inp["audio_features"].shape[-3:]
    hints = {"audio_window": window, "audio_layers": layers, "audio_channels": channels, **hints}
    model = build_dit(sd, resolve_config(weights, sd, hints, config_path), weights)
    expected = fixture.tensors
    atol, rtol = _DEFAULT_TOL
    x, y = inp["x"][None], inp["y"][None]
    t, context, clip = inp["t"], inp["context"][None], inp["clip_fea"]
    n_all = inp["audio_features"].shape[0]
    results: list[Comparison] = []

    outputs = sorted(k for k in expected if re.fullmatch(r"out_n\d+(_zero_audio)?", k))
    outputs_n_all = None
    debug_call = f"out_n{n_all}"
    for name in outputs:
        n = int(re.match(r"out_n(\d+)", name).group(1))
        speakers = _speakers(inp, n, zero_audio=name.endswith("_zero_audio"))
        store, hooks = _capture_debug(model) if name == debug_call else ({}, [])
        with torch.no_grad():
            out = model(x, t, context, clip, y, speakers)[0]
        for h in hooks:
            h.remove()
        results.append(compare(name, out, expected[name], atol, rtol))
        for key in sorted(k for k in expected if k.startswith("dbg_") and k in store):
            actual = store[key]
            if key == "dbg_time_projection":
                actual = actual.reshape(expected[key].shape)
            results.append(compare(key, actual, expected[key], atol, rtol))
        if name == f"out_n{n_all}":
            outputs_n_all = out

    # reference only: the official code's bf16-cast AFCA output, checked to lie within that cast's distance
    # of the float32 output (``checks.max_abs_diff_official_bf16_afca_vs_fp32`` in the json)
    gap = float(fixture.meta.get("checks", {}).get("max_abs_diff_official_bf16_afca_vs_fp32") or 1e-3)
    for key in sorted(k for k in expected if re.fullmatch(r"ref_out_n\d+_official_bf16_afca", k)):
        if key == f"ref_out_n{n_all}_official_bf16_afca" and outputs_n_all is not None:
            results.append(compare(key, outputs_n_all, expected[key], 2 * gap + atol, 0.0))

    mask_key = next((k for k in expected if k.startswith("dbg_afca_attn_mask")), None)
    if mask_key is not None:
        exp = expected[mask_key]
        f, h, w = inp["face_token_mask_grid"].shape[1:]
        video_frames = inp["audio_features"].shape[1]
        tokens = model.config.audio_context_tokens
        face_tokens = exp.shape[-1] - tokens * video_frames
        mask = fused_visibility_mask(f, h * w, video_frames, tokens, face_tokens, model.config.vae_scale)
        results.append(compare_exact(mask_key, mask.to(torch.uint8)[None, None], exp))
    return results
