"""The shipped native workflows (workflows/native_*.json) end to end in a real ComfyUI server.

    COMFYUI_PATH=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/its/python] pytest tests/test_native_server.py

Same server harness as tests/test_comfyui_server.py, with tiny models sized for ComfyUI's Wan model (CLIP
width 1280, 128-wide heads) in models/: the UI-format workflows are converted with the server's own
/object_info and run with the core KSampler to an mp4. TorchCompileModel is taken out of the LoRA + compile
workflow (compiling again for every workflow would cost minutes; tests/test_native_route.py runs
TorchCompileModel itself); its LoRA runs.

Long clips: the shipped native long-clip graph (25 frames, 3 overlapping windows) gives exactly the audio's
frame count, and its frames equal the pack's AnyTalker Long Sampler (the core's run_windows on the core DiT)
on the same files in the same server within the tolerances of tests/test_native_route.py; the shipped pack
long-clip workflow gives the audio's frame count for a 3-window clip too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO
from test_native_route import comfyui  # noqa: F401 - the (path, python) fixture

try:  # the shared harness (tests/comfyui_harness.py) where it exists, else the server test's own
    from comfyui_harness import Server, ui_to_api
    SHARED_HARNESS = True
except ImportError:
    from test_comfyui_server import Server, ui_to_api
    SHARED_HARNESS = False

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


def native_models(root: Path) -> dict[str, Path]:
    """Tiny random models in ComfyUI's models/ layout, widths chosen for ComfyUI's Wan model."""
    import torch
    from safetensors.torch import save_file

    from anytalker_core.audio import make_tiny_wav2vec
    from anytalker_core.encoders import (
        make_tiny_clip_vision,
        make_tiny_text_encoder,
        make_tiny_vae,
    )
    from anytalker_core.testing.demo import DemoWidths, make_demo_dit

    dit = make_demo_dit(root / "diffusion_models" / "anytalker_native_tiny.safetensors",
                        DemoWidths(clip_dim=1280, dit_dim=256))
    text = make_tiny_text_encoder(root / "text_encoders", d_model=32)
    clip = make_tiny_clip_vision(root / "clip_vision" / "clip_vision_h_1280_tiny.safetensors", hidden_size=1280,
                                 num_layers=2, intermediate_size=64)  # 2: ComfyUI reads layer -2
    vae = make_tiny_vae(root / "vae" / "wan_2.1_vae_tiny.safetensors")
    wav2vec = make_tiny_wav2vec(root / "audio_encoders" / "wav2vec2-base-960h-tiny", hidden_size=64, num_layers=2)
    (root / "loras").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(256, 4, generator=g) * 0.1,
               "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(4, 256, generator=g) * 0.1,
               "diffusion_model.blocks.1.cross_attn.k_audio.lora_up.weight": torch.randn(256, 4, generator=g) * 0.1,
               "diffusion_model.blocks.1.cross_attn.k_audio.lora_down.weight": torch.randn(4, 256, generator=g) * 0.1},
              str(root / "loras" / "tiny_lora.safetensors"))
    return {"dit": dit, "text": Path(text), "clip": clip, "vae": vae, "wav2vec": Path(wav2vec)}


@pytest.fixture(scope="module")
def server(comfyui, tmp_path_factory):  # noqa: F811
    from PIL import Image

    from anytalker_core.testing.demo import demo_image
    from anytalker_core.testing.speech import synthesize_speech

    base = tmp_path_factory.mktemp("comfyui_native")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-AnyTalker").symlink_to(REPO, target_is_directory=True)
    (base / "custom_nodes" / "anytalker_test_nodes").symlink_to(REPO / "tests" / "comfyui_test_nodes",
                                                                 target_is_directory=True)
    models = native_models(base / "models")
    (base / "input").mkdir()
    for n in (1, 2, 3):
        Image.fromarray(demo_image(n, size=96)).save(base / "input" / f"astronauts_{n}.png")
    for i, (text, voice) in enumerate([("Hello there", "en-us"), ("Yes indeed", "en-gb"), ("Wait for me", "en-us")]):
        synthesize_speech(text, base / "input" / f"person{i + 1}.wav", voice=voice)
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # tiny tensors: more threads only spin on a shared CI machine
    try:
        srv = Server(comfyui, base) if SHARED_HARNESS else Server(base)
    finally:
        if threads is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = threads
    try:
        srv.wait_ready()
        srv.models = models
        yield srv
    finally:
        srv.stop()


def text_encoder_file(models: dict) -> str:
    text = models["text"]
    return str(text if text.is_file() else next(text.glob("*.safetensors")))


LONG_WINDOW = 13  # with the automatic 5-frame overlap: 25 frames = windows 0-12, 8-20, 16-24
LONG_FRAMES = 25


def tiny_prompt(prompt: dict, models: dict, people: int, frames: int, test_nodes: set[str]) -> dict:
    """Point a native workflow at the tiny models and inputs (encoders ComfyUI cannot load tiny become the
    test-only nodes of tests/comfyui_test_nodes that give the same types)."""
    text_loader = "AnyTalkerTestCLIPLoader" in test_nodes  # a tiny CLIP for the native CLIP Text Encode
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "AnyTalkerNativeModelLoader":
            inputs["unet_name"] = models["dit"].name
        elif kind == "AnyTalkerWav2VecLoader":
            inputs["model_name"] = f"{models['wav2vec'].name}/model.safetensors"
        elif kind == "VAELoader":
            inputs["vae_name"] = Path(models["vae"]).name
        elif kind == "LoadImage":
            inputs["image"] = f"astronauts_{people}.png"
        elif kind == "LoadAudio":
            inputs["audio"] = inputs["audio"].replace("speaker", "person")
        elif kind == "CLIPLoader" and text_loader:
            prompt[node_id] = {"class_type": "AnyTalkerTestCLIPLoader", "inputs": {"path": text_encoder_file(models)}}
        elif kind == "CLIPLoader":
            del prompt[node_id]
        elif kind == "CLIPTextEncode" and not text_loader:
            prompt[node_id] = {"class_type": "AnyTalkerTestTextEncode",
                               "inputs": {"path": text_encoder_file(models), "text": inputs["text"]}}
        elif kind == "CLIPVisionLoader":
            loader = "AnyTalkerTestClipVisionLoader" if text_loader else "AnyTalkerTestClipVision"
            prompt[node_id] = {"class_type": loader, "inputs": {"path": str(models["clip"])}}
        elif kind == "LoraLoaderModelOnly":
            inputs["lora_name"] = "tiny_lora.safetensors"
        elif kind == "AnyTalkerAudioEncode":
            inputs["frame_count"] = frames
        elif kind == "AnyTalkerFaceMasks":
            inputs["boxes"] = "; ".join(f"{96 * i + 30},20,{96 * i + 66},60" for i in range(people))
        elif kind == "AnyTalkerNativeToVideo":
            inputs["max_pixels"] = 64 * 64 * people
        elif kind == "AnyTalkerNativeLongSampler":
            inputs.update(max_pixels=64 * 64 * people, window_frames=LONG_WINDOW, steps=2, resume=False)
        elif kind == "KSampler":
            inputs["steps"] = 2
    for node_id, node in list(prompt.items()):  # TorchCompileModel out: its consumers take its input
        if node["class_type"] == "TorchCompileModel":
            source = node["inputs"]["model"]
            del prompt[node_id]
            for other in prompt.values():
                for name, value in other["inputs"].items():
                    if value == [node_id, 0]:
                        other["inputs"][name] = source
    return prompt


def failure(entry: dict) -> str:
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    if not errors:
        return json.dumps(entry["status"], indent=1)[:3000]
    e = errors[0]
    return f"{e['node_type']}: {e['exception_type']}: {e['exception_message']}\n" + "".join(e["traceback"][-4:])


@pytest.mark.parametrize("name,people,frames", [("AnyTalker native - one person.json", 1, 9), ("AnyTalker native - two people.json", 2, 9),
                                                ("AnyTalker native - three people.json", 3, 9), ("AnyTalker native - long clip.json", 2, LONG_FRAMES),
                                                ("AnyTalker native - LoRA and TorchCompile.json", 2, 9)])
def test_native_workflow_runs(server, name, people, frames):
    from anytalker_core.io.media import read_video

    workflow = json.loads((REPO / "workflows" / name).read_text())
    info = server.get("/object_info")
    prompt = tiny_prompt(ui_to_api(workflow, info), server.models, people, frames,
                         {k for k in info if k.startswith("AnyTalkerTest")})
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", failure(entry)
    saved = [v for out in entry["outputs"].values() for v in out.get("images", []) + out.get("video", [])
             if str(v.get("filename", "")).endswith(".mp4")]
    assert len(saved) == 1, entry["outputs"]
    clip = read_video(server.base / "output" / saved[0]["subfolder"] / saved[0]["filename"])
    assert clip.frames.shape[0] == frames
    assert clip.frames.shape[1:3] == (64, 64 * people)


def _api(server, name: str, people: int, frames: int) -> tuple[dict, dict]:
    workflow = json.loads((REPO / "workflows" / name).read_text())
    info = server.get("/object_info")
    return tiny_prompt(ui_to_api(workflow, info), server.models, people, frames,
                       {k for k in info if k.startswith("AnyTalkerTest")}), info


def _node(prompt: dict, kind: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == kind)


def _saved_frames(server, name: str):
    from safetensors.torch import load_file

    return load_file(str(server.base / "output" / name))["value"]


def _mp4_frames(server, entry) -> tuple:
    from anytalker_core.io.media import read_video

    saved = [v for out in entry["outputs"].values() for v in out.get("images", []) + out.get("video", [])
             if str(v.get("filename", "")).endswith(".mp4")]
    assert len(saved) == 1, entry["outputs"]
    return read_video(server.base / "output" / saved[0]["subfolder"] / saved[0]["filename"])


def test_native_long_clip_equals_the_pack_long_sampler(server):
    """The shipped native long-clip graph against the core path (the pack's Long Sampler, run_windows on the
    core DiT) on the same files, encoders and inputs, in one prompt: 2 people, 25 frames, 3 windows."""
    from test_native_route import LONG_MAX_LEVELS, LONG_MEAN_LEVELS

    prompt, _ = _api(server, "AnyTalker native - long clip.json", 2, LONG_FRAMES)
    native_id = _node(prompt, "AnyTalkerNativeLongSampler")
    native = prompt[native_id]["inputs"]
    native.update(sampler_name="euler", scheduler="simple", seed=5, cfg=4.5)
    shift_id = native["model"][0]
    assert prompt[shift_id]["class_type"] == "ModelSamplingSD3" and prompt[shift_id]["inputs"]["shift"] == 3.0
    prompt["900"] = {"class_type": "AnyTalkerModelLoader",
                     "inputs": {"model_name": server.models["dit"].name, "weight_dtype": "fp32", "attention": "sdpa",
                                "block_storage": "same"}}
    prompt["901"] = {"class_type": "AnyTalkerConditioning",
                     "inputs": {k: native[k] for k in ("positive", "negative", "clip_vision", "vae", "start_image",
                                                       "faces", "audio_features")}
                     | {"max_pixels": native["max_pixels"], "window_frames": LONG_WINDOW}}
    prompt["902"] = {"class_type": "AnyTalkerLongSampler",
                     "inputs": {"model": ["900", 0], "conditioning": ["901", 0], "vae": native["vae"],
                                "clip_vision": native["clip_vision"], "window_frames": LONG_WINDOW, "seed": 5,
                                "steps": 2, "sampler_name": "euler", "cfg": 4.5, "shift": 3.0, "audio_cfg": 0.0,
                                "overlap_frames": 0, "colour_match": True, "overlap_mode": "latent",
                                "overlap_merge": "blend", "clip_reference": "start", "reanchor_every": 0,
                                "resume": False}}
    prompt["903"] = {"class_type": "AnyTalkerTestSaveTensors",
                     "inputs": {"filename": "long/native.safetensors", "value": [native_id, 0]}}
    prompt["904"] = {"class_type": "AnyTalkerTestSaveTensors",
                     "inputs": {"filename": "long/core.safetensors", "value": ["902", 0]}}
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", failure(entry)
    native_frames = (_saved_frames(server, "long/native.safetensors") * 255).round()
    core_frames = (_saved_frames(server, "long/core.safetensors") * 255).round()
    assert native_frames.shape == core_frames.shape == (LONG_FRAMES, 64, 128, 3)
    levels = (native_frames - core_frames).abs()
    assert float(levels.mean()) < LONG_MEAN_LEVELS and float(levels.max()) <= LONG_MAX_LEVELS, \
        (float(levels.mean()), float(levels.max()))
    assert _mp4_frames(server, entry).frames.shape[0] == LONG_FRAMES


def test_pack_long_workflow_has_the_audio_frame_count(server):
    """The shipped pack long-clip workflow (AnyTalker Long Sampler) on a 3-window clip: 25 frames, 25/24 s."""
    workflow = json.loads((REPO / "workflows" / "AnyTalker - long clip.json").read_text())
    info = server.get("/object_info")
    prompt = ui_to_api(workflow, info)
    text_loader = "AnyTalkerTestCLIPLoader" in info
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "AnyTalkerModelLoader":
            inputs["model_name"] = server.models["dit"].name
        elif kind == "AnyTalkerConditioning":
            inputs.update(max_pixels=64 * 64, window_frames=LONG_WINDOW)
        elif kind == "AnyTalkerLongSampler":
            inputs.update(window_frames=LONG_WINDOW, steps=2, resume=False)
    prompt = tiny_prompt(prompt, server.models, 1, LONG_FRAMES, {k for k in info if k.startswith("AnyTalkerTest")})
    assert text_loader or all(v["class_type"] != "CLIPLoader" for v in prompt.values())
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", failure(entry)
    clip = _mp4_frames(server, entry)
    assert clip.frames.shape[:3] == (LONG_FRAMES, 64, 64)
    assert clip.audio is not None and clip.audio.shape[-1] / clip.sample_rate == pytest.approx(LONG_FRAMES / 24,
                                                                                               abs=0.03)
