"""The node pack inside a real ComfyUI server (tests/comfyui_harness.py, fixtures in conftest.py).

    python -m pytest tests/test_comfyui_server.py     # builds/uses the cached ComfyUI test env
    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python python -m pytest tests/test_comfyui_server.py

One ComfyUI (``--cpu``, loopback, a temporary ``--base-directory``) with this pack and
tests/comfyui_test_nodes linked in and anytalker_core's tiny random models in models/. Then:
/object_info lists every node; a two-person prompt runs Load Image/Load Audio → our loaders, audio,
faces, conditioning (with ComfyUI's CLIP Text Encode, CLIP vision and VAE), sampler → VAE Decode →
Create Video (24 fps, mixed audio) → Save Video and the mp4 is checked, and the same with the Long
Sampler (two chained windows); a bad graph reports a clear execution_error; POST /interrupt stops a
long sampling run; every shipped workflow runs. The stub's ComfyUI values are checked against the
live ComfyUI. In CI (CI=true) a missing ComfyUI fails instead of skipping.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from comfyui_harness import IMAGES, saved_files, ui_to_api
from conftest import REPO

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(comfyui_server):
    return comfyui_server


def two_person_prompt(paths, steps: int = 2, frame_count: int = 9, boxes: str = "30,20,66,60; 126,20,162,60"):
    """An API-format graph: inputs → AnyTalker nodes → VAE Decode → Create Video → Save Video (the tiny
    UMT5 and CLIP vision through the test loaders, which build ComfyUI's own classes)."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "two_astronauts.png"}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": "person1.wav"}},
        "3": {"class_type": "LoadAudio", "inputs": {"audio": "person2.wav"}},
        "4": {"class_type": "AnyTalkerModelLoader",
              "inputs": {"model_name": Path(paths.dit).name, "weight_dtype": "auto", "attention": "sdpa",
                         "block_storage": "same"}},
        "5": {"class_type": "AnyTalkerWav2VecLoader",
              "inputs": {"model_name": f"{Path(paths.wav2vec).name}/model.safetensors"}},
        "6": {"class_type": "AnyTalkerAudioEncode",
              "inputs": {"wav2vec": ["5", 0], "speakers.audio0": ["2", 0], "speakers.audio1": ["3", 0],
                         "mode": "pad", "frame_count": frame_count, "normalize_loudness": False}},
        "7": {"class_type": "AnyTalkerFaceMasks",
              "inputs": {"image": ["1", 0], "people": ["6", 1], "detector": "auto", "boxes": boxes}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["18", 0], "text": "two astronauts talk"}},
        "9": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["18", 0], "text": "blurry"}},
        "10": {"class_type": "AnyTalkerTestClipVisionLoader", "inputs": {"path": str(paths.clip_vision)}},
        "11": {"class_type": "VAELoader", "inputs": {"vae_name": Path(paths.vae).name}},
        "12": {"class_type": "AnyTalkerConditioning",
               "inputs": {"positive": ["8", 0], "negative": ["9", 0], "clip_vision": ["10", 0], "vae": ["11", 0],
                          "start_image": ["1", 0], "faces": ["7", 0], "audio_features": ["6", 0],
                          "max_pixels": 64 * 128, "window_frames": 0}},
        "13": {"class_type": "AnyTalkerSampler",
               "inputs": {"model": ["4", 0], "conditioning": ["12", 0], "seed": 3, "steps": steps,
                          "sampler_name": "unipc", "cfg": 4.5, "shift": 0.0, "audio_cfg": 0.0}},
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["11", 0]}},
        "15": {"class_type": "CreateVideo", "inputs": {"images": ["14", 0], "fps": 24.0, "audio": ["6", 3]}},
        "16": {"class_type": "SaveVideo", "inputs": {"video": ["15", 0], "filename_prefix": "anytalker/test",
                                                     "format": "auto", "codec": "auto"}},
        "17": {"class_type": "PreviewImage", "inputs": {"images": ["7", 2]}},
        "18": {"class_type": "AnyTalkerTestCLIPLoader", "inputs": {"path": str(paths.text_encoder)}},
    }


def test_object_info_lists_the_nodes(server):
    info = server.get("/object_info")
    ours = sorted(k for k in info if k.startswith("AnyTalker") and not k.startswith("AnyTalkerTest"))
    assert ours == sorted(["AnyTalkerModelLoader", "AnyTalkerWav2VecLoader", "AnyTalkerAudioEncode",
                           "AnyTalkerFaceMasks", "AnyTalkerConditioning", "AnyTalkerSampler", "AnyTalkerLongSampler",
                           "AnyTalkerScoreVideo", "AnyTalkerSplitVoices", "AnyTalkerNativeModelLoader",
                           "AnyTalkerNativeToVideo", "AnyTalkerNativeLongSampler",
                           "AnyTalkerNativeGuider"])
    assert "IMPORT FAILED" not in server.text_log()
    speakers = info["AnyTalkerAudioEncode"]["input"]["required"]["speakers"]
    assert speakers[0] == "COMFY_AUTOGROW_V3" and speakers[1]["template"]["prefix"] == "audio"
    assert info["AnyTalkerSampler"]["output"] == ["LATENT"]
    assert info["AnyTalkerLongSampler"]["output"] == ["IMAGE"]


def test_two_person_graph_to_mp4(server):
    from anytalker_core.io.media import read_video

    started = time.monotonic()
    entry = server.run(two_person_prompt(server.paths))
    elapsed = time.monotonic() - started
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    videos = saved_files(entry, ".mp4")
    assert videos, entry["outputs"]
    clip = read_video(server.base / "output" / videos[0]["subfolder"] / videos[0]["filename"])
    assert clip.frames.shape[0] == 9 and clip.fps == pytest.approx(24)
    assert clip.frames.shape[1:3] == (64, 128)  # max_pixels 64*128 keeps the 1:2 image aspect
    assert clip.audio is not None and clip.audio.shape[-1] / clip.sample_rate == pytest.approx(9 / 24, abs=0.03)
    print(f"two-person graph ran in {elapsed:.1f} s")


def test_long_sampler_graph_to_mp4(server):
    """13 frames in overlapping windows of 9: Long Sampler → Create Video → Save Video."""
    from anytalker_core.io.media import read_video

    prompt = two_person_prompt(server.paths, frame_count=13)
    prompt["13"] = {"class_type": "AnyTalkerLongSampler",
                    "inputs": {"model": ["4", 0], "conditioning": ["12", 0], "vae": ["11", 0], "clip_vision": ["10", 0],
                               "window_frames": 9, "seed": 3, "steps": 2, "sampler_name": "unipc", "cfg": 4.5,
                               "shift": 0.0, "audio_cfg": 0.0, "overlap_frames": 0, "colour_match": True,
                               "overlap_mode": "latent", "overlap_merge": "blend", "clip_reference": "start",
                               "reanchor_every": 0, "resume": False}}
    del prompt["14"]
    prompt["15"]["inputs"]["images"] = ["13", 0]
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    videos = saved_files(entry, ".mp4")
    clip = read_video(server.base / "output" / videos[0]["subfolder"] / videos[0]["filename"])
    assert clip.frames.shape[:3] == (13, 64, 128) and clip.fps == pytest.approx(24)
    assert clip.audio is not None and clip.audio.shape[-1] / clip.sample_rate == pytest.approx(13 / 24, abs=0.03)


def test_errors_reach_the_history(server):
    entry = server.run(two_person_prompt(server.paths, boxes="30,20,66,60"))  # one box for two speakers
    assert entry["status"]["status_str"] == "error"
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["node_type"] == "AnyTalkerFaceMasks" and error["exception_type"].endswith("InputError")
    # in the node's own words: its 'boxes' input, audio inputs (not --boxes / audio tracks)
    assert "the 'boxes' input: 1 face box(es) given for 2 audio input(s)" in error["exception_message"]
    # the server keeps serving after an error
    assert server.get("/system_stats")


def test_interrupt_stops_sampling(server):
    def prompt_with(steps: int) -> dict:
        prompt = two_person_prompt(server.paths, steps=steps)
        prompt["12"]["inputs"]["max_pixels"] = 256 * 512  # 200 steps take seconds: interrupted mid-way
        return prompt

    warm = server.run(prompt_with(1))  # upstream nodes now come from the cache
    assert warm["status"]["status_str"] == "success"
    prompt = prompt_with(200)
    prompt["13"]["inputs"]["seed"] = 11

    def interrupt():
        time.sleep(1.0)
        server.post("/interrupt", {})

    entry = server.run(prompt, on_start=interrupt, timeout=300)
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    interrupted = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_interrupted")
    assert interrupted["node_type"] == "AnyTalkerSampler", interrupted
    assert "execution_success" not in kinds
    assert np.isfinite(server.get("/system_stats")["system"]["ram_total"])


# ------------------------------------------------------------------------- the shipped workflows


def with_tiny_models(prompt: dict, paths, people: int) -> dict:
    """Point the workflow at the tiny models and inputs. Load CLIP and Load CLIP Vision pick full-size
    architectures, so those two loaders become the test loaders (ComfyUI's own classes, tiny sizes);
    CLIP Text Encode and everything else stay native."""
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "AnyTalkerModelLoader":
            inputs["model_name"] = Path(paths.dit).name
        elif kind == "AnyTalkerWav2VecLoader":
            inputs["model_name"] = f"{Path(paths.wav2vec).name}/model.safetensors"
        elif kind == "VAELoader":
            inputs["vae_name"] = Path(paths.vae).name
        elif kind == "LoadImage":
            inputs["image"] = IMAGES[people]
        elif kind == "LoadAudio":
            inputs["audio"] = inputs["audio"].replace("speaker", "person")
        elif kind == "CLIPLoader":
            prompt[node_id] = {"class_type": "AnyTalkerTestCLIPLoader", "inputs": {"path": str(paths.text_encoder)}}
        elif kind == "CLIPVisionLoader":
            prompt[node_id] = {"class_type": "AnyTalkerTestClipVisionLoader",
                               "inputs": {"path": str(paths.clip_vision)}}
        elif kind == "AnyTalkerAudioEncode":
            inputs["frame_count"] = 9
        elif kind == "AnyTalkerFaceMasks":
            inputs["boxes"] = "; ".join(f"{96 * i + 30},20,{96 * i + 66},60" for i in range(people))
        elif kind == "AnyTalkerConditioning":
            inputs["max_pixels"] = 64 * 64 * people
        elif kind == "AnyTalkerSampler":
            inputs["steps"] = 2
        elif kind == "AnyTalkerLongSampler":
            inputs.update(steps=2, window_frames=5)  # the 9 frames in two windows
    return prompt


@pytest.mark.parametrize("name,people", [("AnyTalker - one person.json", 1), ("AnyTalker - two people.json", 2),
                                         ("AnyTalker - three people.json", 3), ("AnyTalker - long clip.json", 1)])
def test_shipped_workflow_runs(server, name, people):
    workflow = json.loads((REPO / "workflows" / name).read_text())
    prompt = with_tiny_models(ui_to_api(workflow, server.get("/object_info")), server.paths, people)
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    saved = saved_files(entry, ".mp4")
    assert len(saved) == 1


def test_shipped_score_workflow_runs(server):
    from anytalker_core.io.media import write_video
    from anytalker_core.testing.demo import demo_image

    frames = np.repeat(demo_image(2, size=96)[None], 12, axis=0)  # a still two-person clip, 0.5 s
    wave = np.zeros(8000, dtype=np.float32)
    write_video(server.base / "input" / "anytalker_two_people.mp4", frames, 24, audio=wave, sample_rate=16000)
    workflow = json.loads((REPO / "workflows" / "AnyTalker - score a video.json").read_text())
    prompt = ui_to_api(workflow, server.get("/object_info"))
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    texts = [t for out in entry["outputs"].values() for t in out.get("text", [])]
    report = next(json.loads(t) for t in texts if t.startswith("{"))
    assert report["status"] == "ok" and report["interactivity"] == 0.0  # nobody moves


def test_stub_golden_matches_the_live_comfyui(comfyui_env):
    """tests/comfy_stub reads ComfyUI's numbers from a recorded file; it must equal the live ComfyUI's."""
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "import record_comfy_stub_golden as r; print(json.dumps(r.record(Path(sys.argv[2]))))")
    proc = subprocess.run([comfyui_env.python, "-c", code, str(REPO / "scripts"), str(comfyui_env.path)],
                          capture_output=True, text=True, cwd=comfyui_env.path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    live = json.loads(proc.stdout.strip().splitlines()[-1])
    golden = json.loads((REPO / "tests" / "comfy_stub" / "golden" / "comfyui.json").read_text())
    assert {k: v for k, v in live.items() if k != "recorded_from"} == \
        {k: v for k, v in golden.items() if k != "recorded_from"}


def test_the_documented_install_detects_faces(server):
    """The ComfyUI env installed the pack as docs/comfyui.md says (requirements.txt + install.py): its
    MediaPipe finds the faces of a real photo (scikit-image's astronaut, twice) with no boxes given."""
    from safetensors.torch import load_file

    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": IMAGES[2]}},
        "2": {"class_type": "AnyTalkerFaceMasks", "inputs": {"image": ["1", 0], "people": 2,
                                                             "detector": "mediapipe", "boxes": ""}},
        "3": {"class_type": "AnyTalkerTestSaveTensors",
              "inputs": {"filename": "faces/detected.safetensors", "value": ["2", 1]}},
    }
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    masks = load_file(server.base / "output" / "faces" / "detected.safetensors")["value"]
    assert masks.shape[0] == 2
    left, right = (m.nonzero()[:, 1].float().mean().item() for m in masks)  # mean column of each mask
    assert left < masks.shape[2] / 2 < right  # one face per half, numbered left to right
