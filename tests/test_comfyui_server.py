"""The node pack inside a real ComfyUI server (runs only when COMFYUI_PATH points at a checkout).

    COMFYUI_PATH=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/its/python] pytest tests/test_comfyui_server.py

Starts ComfyUI on 127.0.0.1 with ``--cpu`` and a temporary ``--base-directory`` (its own
custom_nodes/, models/, input/, output/), with this pack and tests/comfyui_test_nodes linked in, and
anytalker_core's tiny random models in models/. Then: /object_info lists every node; a two-person
prompt runs Load Image/Load Audio → our loaders, audio, faces, conditioning, sampler → VAE Decode →
Create Video (24 fps, mixed audio) → Save Video and the mp4 is checked, and the same with the Long Sampler
(two chained windows); a bad graph reports a clear
execution_error; POST /interrupt stops a long sampling run. The server is stopped at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = [pytest.mark.comfyui, pytest.mark.slow,
              pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run")]

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        self.log = open(base / "server.log", "w")  # noqa: SIM115 - the server writes to it until stop()
        env = dict(os.environ, ANYTALKER_PACK_DIR=str(REPO))
        self.proc = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", HOST, "--port", str(self.port), "--base-directory", str(base),
             "--disable-auto-launch"],
            cwd=COMFYUI, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, data: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            return json.loads(body) if body else None

    def wait_ready(self, timeout: float = 180) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early:\n{self.text_log()[-4000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer in {timeout} s:\n{self.text_log()[-4000:]}")

    def run(self, prompt: dict, timeout: float = 300, on_start=None) -> dict:
        prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]
        end = time.monotonic() + timeout
        started = False
        while time.monotonic() < end:
            if on_start is not None and not started:
                running = self.get("/queue")["queue_running"]
                if any(item[1] == prompt_id for item in running):
                    started = True
                    on_start()
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]  # success, error or interrupted
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.text_log()[-4000:]}")

    def text_log(self) -> str:
        self.log.flush()
        return (self.base / "server.log").read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from PIL import Image

    from anytalker_core.testing.speech import synthesize_speech
    from anytalker_core.testing.demo import build_demo_models, demo_image

    base = tmp_path_factory.mktemp("comfyui")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-AnyTalker").symlink_to(REPO, target_is_directory=True)
    (base / "custom_nodes" / "anytalker_test_nodes").symlink_to(REPO / "tests" / "comfyui_test_nodes",
                                                                 target_is_directory=True)
    paths = build_demo_models(base / "models")
    (base / "input").mkdir()
    Image.fromarray(demo_image(2, size=96)).save(base / "input" / "two_astronauts.png")
    for n in (1, 3):
        Image.fromarray(demo_image(n, size=96)).save(base / "input" / f"astronauts_{n}.png")
    for i, (text, voice) in enumerate([("Hello there", "en-us"), ("Yes indeed", "en-gb"), ("Wait for me", "en-us")]):
        synthesize_speech(text, base / "input" / f"person{i + 1}.wav", voice=voice)
    srv = Server(base)
    try:
        srv.wait_ready()
        srv.paths = paths
        yield srv
    finally:
        srv.stop()


def two_person_prompt(paths, steps: int = 2, frame_count: int = 9, boxes: str = "30,20,66,60; 126,20,162,60"):
    """An API-format graph: inputs → AnyTalker nodes → VAE Decode → Create Video → Save Video."""
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
        "8": {"class_type": "AnyTalkerTestTextEncode", "inputs": {"path": str(paths.text_encoder),
                                                                  "text": "two astronauts talk"}},
        "9": {"class_type": "AnyTalkerTestTextEncode", "inputs": {"path": str(paths.text_encoder), "text": "blurry"}},
        "10": {"class_type": "AnyTalkerTestClipVision", "inputs": {"path": str(paths.clip_vision)}},
        "11": {"class_type": "VAELoader", "inputs": {"vae_name": Path(paths.vae).name}},
        "12": {"class_type": "AnyTalkerConditioning",
               "inputs": {"positive": ["8", 0], "negative": ["9", 0], "clip_vision": ["10", 0], "vae": ["11", 0],
                          "start_image": ["1", 0], "faces": ["7", 0], "audio_features": ["6", 0],
                          "max_pixels": 64 * 128}},
        "13": {"class_type": "AnyTalkerSampler",
               "inputs": {"model": ["4", 0], "conditioning": ["12", 0], "seed": 3, "steps": steps,
                          "sampler_name": "unipc", "cfg": 4.5, "shift": 0.0, "audio_cfg": 0.0}},
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["11", 0]}},
        "15": {"class_type": "CreateVideo", "inputs": {"images": ["14", 0], "fps": 24.0, "audio": ["6", 3]}},
        "16": {"class_type": "SaveVideo", "inputs": {"video": ["15", 0], "filename_prefix": "anytalker/test",
                                                     "format": "auto", "codec": "auto"}},
        "17": {"class_type": "PreviewImage", "inputs": {"images": ["7", 2]}},
    }


def test_object_info_lists_the_nodes(server):
    info = server.get("/object_info")
    ours = sorted(k for k in info if k.startswith("AnyTalker") and not k.startswith("AnyTalkerTest"))
    assert ours == sorted(["AnyTalkerModelLoader", "AnyTalkerWav2VecLoader", "AnyTalkerAudioEncode",
                           "AnyTalkerFaceMasks", "AnyTalkerConditioning", "AnyTalkerSampler", "AnyTalkerLongSampler",
                           "AnyTalkerScoreVideo", "AnyTalkerSplitVoices"])
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
    videos = [v for out in entry["outputs"].values() for v in out.get("images", []) + out.get("video", [])
              if str(v.get("filename", "")).endswith(".mp4")]
    assert videos, entry["outputs"]
    clip = read_video(server.base / "output" / videos[0]["subfolder"] / videos[0]["filename"])
    assert clip.frames.shape[0] == 9 and clip.fps == pytest.approx(24)
    assert clip.frames.shape[1:3] == (64, 128)  # max_pixels 64*128 keeps the 1:2 image aspect
    assert clip.audio is not None and clip.audio.shape[-1] / clip.sample_rate == pytest.approx(9 / 24, abs=0.03)
    print(f"two-person graph ran in {elapsed:.1f} s")


def test_long_sampler_graph_to_mp4(server):
    """13 frames in windows of 9 (frames 0-8, then 8-12): Long Sampler → Create Video → Save Video."""
    from anytalker_core.io.media import read_video

    prompt = two_person_prompt(server.paths, frame_count=13)
    prompt["13"] = {"class_type": "AnyTalkerLongSampler",
                    "inputs": {"model": ["4", 0], "conditioning": ["12", 0], "vae": ["11", 0], "clip_vision": ["10", 0],
                               "window_frames": 9, "seed": 3, "steps": 2, "sampler_name": "unipc", "cfg": 4.5,
                               "shift": 0.0, "audio_cfg": 0.0}}
    del prompt["14"]
    prompt["15"]["inputs"]["images"] = ["13", 0]
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    videos = [v for out in entry["outputs"].values() for v in out.get("images", []) + out.get("video", [])
              if str(v.get("filename", "")).endswith(".mp4")]
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
    warm = server.run(two_person_prompt(server.paths, steps=1))  # upstream nodes now come from the cache
    assert warm["status"]["status_str"] == "success"
    prompt = two_person_prompt(server.paths, steps=200)
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


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def widget_names(info: dict) -> list[tuple[str, bool]]:
    """A node's widget inputs in the order the UI stores them, with 'has a control_after_generate value'."""
    names = []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            spec = info["input"][section][name]
            kind = spec[0]
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                options = spec[1] if len(spec) > 1 else {}
                names.append((name, bool(options.get("control_after_generate"))))
    return names


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """What the frontend sends for a UI-format workflow: widget values by name, links as [node, slot]."""
    links = {row[0]: row for row in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        info = object_info[node["type"]]
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, control in widget_names(info):
            inputs[name] = values.pop(0)
            if control:
                values.pop(0)
        for inp in node["inputs"]:
            if inp.get("link") is not None:
                _, src, slot, *_ = links[inp["link"]]
                inputs[inp["name"]] = [str(src), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def with_tiny_models(prompt: dict, paths, people: int) -> dict:
    """Point the workflow at the tiny models and inputs; the two encoders ComfyUI cannot load tiny
    (UMT5 via Load CLIP, CLIP vision) become the test-only nodes that produce the same types."""
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "AnyTalkerModelLoader":
            inputs["model_name"] = Path(paths.dit).name
        elif kind == "AnyTalkerWav2VecLoader":
            inputs["model_name"] = f"{Path(paths.wav2vec).name}/model.safetensors"
        elif kind == "VAELoader":
            inputs["vae_name"] = Path(paths.vae).name
        elif kind == "LoadImage":
            inputs["image"] = "two_astronauts.png" if people == 2 else f"astronauts_{people}.png"
        elif kind == "LoadAudio":
            inputs["audio"] = inputs["audio"].replace("speaker", "person")
        elif kind == "CLIPLoader":
            del prompt[node_id]
        elif kind == "CLIPTextEncode":
            prompt[node_id] = {"class_type": "AnyTalkerTestTextEncode",
                               "inputs": {"path": str(paths.text_encoder), "text": inputs["text"]}}
        elif kind == "CLIPVisionLoader":
            prompt[node_id] = {"class_type": "AnyTalkerTestClipVision", "inputs": {"path": str(paths.clip_vision)}}
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


@pytest.mark.parametrize("name,people", [("anytalker_one_person.json", 1), ("anytalker_two_people.json", 2),
                                         ("anytalker_three_people.json", 3), ("anytalker_long_clip.json", 1)])
def test_shipped_workflow_runs(server, name, people):
    workflow = json.loads((REPO / "workflows" / name).read_text())
    prompt = with_tiny_models(ui_to_api(workflow, server.get("/object_info")), server.paths, people)
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    saved = [v for out in entry["outputs"].values() for v in out.get("images", []) if v["filename"].endswith(".mp4")]
    assert len(saved) == 1


def test_shipped_score_workflow_runs(server):
    from anytalker_core.testing.demo import demo_image
    from anytalker_core.io.media import write_video

    frames = np.repeat(demo_image(2, size=96)[None], 12, axis=0)  # a still two-person clip, 0.5 s
    wave = np.zeros(8000, dtype=np.float32)
    write_video(server.base / "input" / "anytalker_two_people.mp4", frames, 24, audio=wave, sample_rate=16000)
    workflow = json.loads((REPO / "workflows" / "anytalker_score_video.json").read_text())
    prompt = ui_to_api(workflow, server.get("/object_info"))
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    texts = [t for out in entry["outputs"].values() for t in out.get("text", [])]
    report = next(json.loads(t) for t in texts if t.startswith("{"))
    assert report["status"] == "ok" and report["interactivity"] == 0.0  # nobody moves
