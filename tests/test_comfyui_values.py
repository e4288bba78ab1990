"""The node graph in a real ComfyUI gives the values AnyTalkerPipeline gives (same tiny models, inputs, seed).

For 1, 2 and 3 people, the graph runs in the real server (fixture ``comfyui_server``) with ComfyUI's own
text encoder (its Wan UMT5 class and tokenizer behind the native CLIP Text Encode), its CLIP vision
model, its Load VAE / Wan VAE, and our nodes; ``AnyTalkerTestSaveTensors`` dumps the AnyTalker
Conditioning output and the sampler's LATENT. The same steps then run here through
``AnyTalkerPipeline`` with anytalker_core's own loaders (transformers UMT5/CLIP, our VAE), as the CLI
does, and the two must agree (allclose): text context, CLIP tokens of the frame and of each face, the
first-frame latent and masks, audio features, token masks, and the sampled latent.

The server runs its text encoders in fp32 (``--fp32-text-enc``), as the CLI does on a CPU; ComfyUI's
CPU default (fp16 weights) would differ by fp16 rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from comfyui_harness import IMAGES

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

PROMPT, NEGATIVE = "people talk in a studio", "blurry, static"
SEED, STEPS, FRAMES = 5, 2, 9
MODES = {1: "pad", 2: "pad", 3: "concat"}


def boxes(people: int) -> str:
    return "; ".join(f"{96 * i + 30},20,{96 * i + 66},60" for i in range(people))


def graph(paths, people: int, tag: str) -> dict:
    speakers = {f"speakers.audio{i}": [str(100 + i), 0] for i in range(people)}
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": IMAGES[people]}},
        "4": {"class_type": "AnyTalkerModelLoader",
              "inputs": {"model_name": Path(paths.dit).name, "weight_dtype": "fp32", "attention": "sdpa",
                         "block_storage": "same"}},
        "5": {"class_type": "AnyTalkerWav2VecLoader",
              "inputs": {"model_name": f"{Path(paths.wav2vec).name}/model.safetensors"}},
        "6": {"class_type": "AnyTalkerAudioEncode",
              "inputs": {"wav2vec": ["5", 0], **speakers, "mode": MODES[people], "frame_count": FRAMES,
                         "normalize_loudness": False}},
        "7": {"class_type": "AnyTalkerFaceMasks",
              "inputs": {"image": ["1", 0], "people": ["6", 1], "detector": "auto", "boxes": boxes(people)}},
        "18": {"class_type": "AnyTalkerTestCLIPLoader", "inputs": {"path": str(paths.text_encoder)}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["18", 0], "text": PROMPT}},
        "9": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["18", 0], "text": NEGATIVE}},
        "10": {"class_type": "AnyTalkerTestClipVisionLoader", "inputs": {"path": str(paths.clip_vision)}},
        "11": {"class_type": "VAELoader", "inputs": {"vae_name": Path(paths.vae).name}},
        "12": {"class_type": "AnyTalkerConditioning",
               "inputs": {"positive": ["8", 0], "negative": ["9", 0], "clip_vision": ["10", 0], "vae": ["11", 0],
                          "start_image": ["1", 0], "faces": ["7", 0], "audio_features": ["6", 0],
                          "max_pixels": 64 * 64 * people, "window_frames": 0}},
        "13": {"class_type": "AnyTalkerSampler",
               "inputs": {"model": ["4", 0], "conditioning": ["12", 0], "seed": SEED, "steps": STEPS,
                          "sampler_name": "unipc", "cfg": 4.5, "shift": 0.0, "audio_cfg": 0.0}},
        "20": {"class_type": "AnyTalkerTestSaveTensors",
               "inputs": {"filename": f"values/{tag}_condition.safetensors", "value": ["12", 0]}},
        "21": {"class_type": "AnyTalkerTestSaveTensors",
               "inputs": {"filename": f"values/{tag}_latent.safetensors", "value": ["13", 0]}},
    }
    for i in range(people):
        prompt[str(100 + i)] = {"class_type": "LoadAudio", "inputs": {"audio": f"person{i + 1}.wav"}}
    return prompt


@pytest.fixture(scope="module")
def pipeline(comfyui_server):
    from anytalker_core.generation.pipeline import AnyTalkerPipeline

    return AnyTalkerPipeline.from_paths(comfyui_server.paths, face_backend="mediapipe")


def pipeline_values(pipe, base: Path, people: int) -> tuple[object, torch.Tensor]:
    """What the CLI computes: the same files through anytalker_core's loaders and stages."""
    from anytalker_core.generation.pipeline import load_image
    from anytalker_core.io.media import load_audio

    image = load_image(base / "input" / IMAGES[people])
    tracks = [load_audio(base / "input" / f"person{i + 1}.wav") for i in range(people)]
    audio = pipe.prepare_audio(tracks, MODES[people], FRAMES)
    plan = pipe.plan(image.shape[:2], audio.frame_num, 64 * 64 * people)
    parsed = [[float(v) for v in box.split(",")] for box in boxes(people).split(";")]
    faces = pipe.prepare_faces(image, people, plan, boxes=parsed)
    condition = pipe.build_condition(image, faces, audio, plan, pipe.encode_prompts(PROMPT, NEGATIVE))
    latent = pipe.denoise(condition, steps=STEPS, sampler="unipc", guidance=4.5, seed=SEED)
    return condition, latent


def close(name: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float = 1e-4) -> str | None:
    if got.shape != want.shape:
        return f"{name}: shape {tuple(got.shape)} (ComfyUI) vs {tuple(want.shape)} (pipeline)"
    diff = (got - want).abs().max().item()
    if not torch.allclose(got, want, atol=atol, rtol=rtol):
        return f"{name}: max |delta| {diff:.3g} (scale {want.abs().max().item():.3g})"
    return None


@pytest.mark.parametrize("people", [1, 2, 3])
def test_node_graph_matches_the_pipeline(comfyui_server, pipeline, people):
    from safetensors.torch import load_file

    from anytalker_core.encoders.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD

    tag = f"p{people}"
    entry = comfyui_server.run(graph(comfyui_server.paths, people, tag))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    out = comfyui_server.base / "output" / "values"
    node = load_file(out / f"{tag}_condition.safetensors")
    node_latent = load_file(out / f"{tag}_latent.safetensors")["value.samples"]

    condition, latent = pipeline_values(pipeline, comfyui_server.base, people)
    mean = torch.tensor(WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN21_LATENTS_STD).view(1, 16, 1, 1, 1)
    raw_latent = latent.float().cpu() * std + mean  # the LATENT ComfyUI passes to VAE Decode

    def padded(context: torch.Tensor) -> torch.Tensor:  # ComfyUI pads UMT5 states with zeros to 512 tokens
        context = context.float().cpu()
        return torch.cat([context, context.new_zeros(1, 512 - context.shape[1], context.shape[2])], dim=1)

    expected = {
        "value.prompts.context": padded(condition.prompts.context),
        "value.prompts.context_null": padded(condition.prompts.context_null),
        "value.clip_fea": condition.clip_fea,
        "value.y": condition.y,
    }
    for i, speaker in enumerate(condition.speakers):
        for field in ("audio", "face_clip", "token_mask"):
            expected[f"value.speakers.{i}.{field}"] = getattr(speaker, field)
    assert set(expected) <= set(node), sorted(set(expected) - set(node))
    problems = [close(k, node[k], v.float().cpu(), atol=2e-4) for k, v in expected.items()]
    problems.append(close("latent", node_latent, raw_latent, atol=2e-3, rtol=1e-3))
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)
    # not trivially equal: each person has their own place and voice (the demo photo repeats one face)
    if people > 1:
        for field in ("token_mask", "audio"):
            assert not torch.equal(node[f"value.speakers.0.{field}"], node[f"value.speakers.1.{field}"]), field
    assert np.isfinite(node_latent.numpy()).all() and node_latent.abs().max() > 0


CLIP_DECISION = r'''
import importlib.util, json, sys
import numpy as np, torch
from PIL import Image
repo, comfyui, image, clip_path = sys.argv[1:5]
sys.path[:0] = [comfyui, repo, repo + "/tests"]
from comfy.cli_args import args
args.cpu = True
args.fp32_text_enc = True
import comfy.clip_model
import comfyui_test_nodes
from anytalker_core.encoders.clip_vision import reference_pixels
spec = importlib.util.spec_from_file_location("anytalker_bridge", repo + "/nodes/_bridge.py")
bridge = sys.modules["anytalker_bridge"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bridge)
crop = np.ascontiguousarray(np.asarray(Image.open(image).convert("RGB"))[20:60, 30:66])  # a face, 36x40 px
rgb = torch.from_numpy(crop)[None].float() / 255
ref = reference_pixels(rgb, 224)
square = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2) * 2 - 1, size=(224, 224), mode="bicubic",
                                         align_corners=False).add(1).mul(0.5).clamp(0, 1).permute(0, 2, 3, 1)
comfy_px = comfy.clip_model.clip_preprocess(square, size=224, crop=False)  # what encode_image feeds CLIP
std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
vision = comfyui_test_nodes.AnyTalkerTestClipVisionLoader.execute(clip_path).args[0]
ours = bridge.ClipVisionAdapter(vision).encode([crop])
native = vision.encode_image(square, crop=False)["penultimate_hidden_states"]
direct = vision.model(pixel_values=ref, intermediate_output=-2)[1]
print(json.dumps({"pixel_delta": float(((comfy_px - ref) * std).abs().max()),
                  "adapter_vs_reference": float((ours - direct).abs().max()),
                  "native_vs_reference": float((native - direct).abs().max())}))
'''


def test_clip_vision_gets_the_reference_pixels(comfyui_env, comfyui_server):
    """The decision on CLIP preprocessing: the node path feeds CLIP the reference's pixels.

    ComfyUI's ``encode_image`` (clip_preprocess) clamps and rounds the resized pixels to 1/255; on a face
    crop that moves pixels by up to ~0.07 (0..1 scale) and the tokens visibly. The pack's adapter feeds the
    reference's unrounded pixels to ComfyUI's own vision tower instead, so nodes and CLI agree.
    """
    import subprocess

    from conftest import REPO

    proc = subprocess.run([comfyui_env.python, "-c", CLIP_DECISION, str(REPO), str(comfyui_env.path),
                           str(comfyui_server.base / "input" / IMAGES[2]), str(comfyui_server.paths.clip_vision)],
                          capture_output=True, text=True, cwd=comfyui_env.path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["pixel_delta"] > 0.03, result        # ComfyUI still rounds/clamps: the decision matters
    assert result["native_vs_reference"] > 1e-2, result
    assert result["adapter_vs_reference"] < 1e-5, result  # ... and the nodes use the reference's pixels
