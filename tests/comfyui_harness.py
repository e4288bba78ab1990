"""A real ComfyUI server for tests: start it on loopback, send prompts, read results (no ComfyUI import here).

The environment comes from ``scripts/comfyui_env.sh`` (through the ``comfyui_env`` fixture in
conftest.py); :func:`prepare_base` lays out a ``--base-directory`` with this pack and
``tests/comfyui_test_nodes`` linked into ``custom_nodes/``, the tiny random-weight models of
``anytalker_core.testing.demo`` in ``models/`` and real inputs (a photo per person count, espeak-ng speech) in
``input/``; :class:`Server` runs ``main.py --cpu`` on it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
#: the speech in input/person{k}.wav, k = 1, 2, 3
SPEECH = [("Hello there", "en-us"), ("Yes indeed", "en-gb"), ("Wait for me", "en-us")]
#: the demo photos in input/: people -> file name (96 px per person, 96 px high)
IMAGES = {1: "astronauts_1.png", 2: "two_astronauts.png", 3: "astronauts_3.png"}


@dataclass(frozen=True)
class ComfyUIEnv:
    """A ComfyUI checkout and the python that runs it."""

    path: Path
    python: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def prepare_base(base: Path):
    """Fill a ComfyUI ``--base-directory``; returns the tiny models' ``ModelPaths``."""
    from PIL import Image

    from anytalker_core.testing.demo import build_demo_models, demo_image
    from anytalker_core.testing.speech import synthesize_speech

    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "ComfyUI-AnyTalker").symlink_to(REPO, target_is_directory=True)
    (base / "custom_nodes" / "anytalker_test_nodes").symlink_to(REPO / "tests" / "comfyui_test_nodes",
                                                                 target_is_directory=True)
    paths = build_demo_models(base / "models")
    (base / "input").mkdir(exist_ok=True)
    for people, name in IMAGES.items():
        Image.fromarray(demo_image(people, size=96)).save(base / "input" / name)
    for i, (text, voice) in enumerate(SPEECH):
        synthesize_speech(text, base / "input" / f"person{i + 1}.wav", voice=voice)
    return paths


class Server:
    """``python main.py --cpu`` of ``env`` on a free loopback port with ``base`` as its base directory."""

    def __init__(self, env: ComfyUIEnv, base: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.base = base
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = open(base / "server.log", "w")  # noqa: SIM115 - the server writes to it until stop()
        server_env = dict(os.environ, ANYTALKER_PACK_DIR=str(REPO))
        self.proc = subprocess.Popen(
            [env.python, "main.py", "--cpu", "--listen", HOST, "--port", str(self.port), "--base-directory",
             str(base), "--disable-auto-launch", *extra_args],
            cwd=env.path, stdout=self.log, stderr=subprocess.STDOUT, env=server_env)

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, data):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            body = r.read()
            return json.loads(body) if body else None

    def wait_ready(self, timeout: float = 300) -> None:
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

    def queue(self, prompt: dict) -> str:
        """POST /prompt; returns the prompt id (a 400 with node_errors raises with its body)."""
        try:
            return self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"/prompt refused the graph: {exc.read().decode(errors='replace')[:3000]}") from None

    def wait(self, prompt_id: str, timeout: float = 300, on_start=None) -> dict:
        """Poll /history until ``prompt_id`` finished (success, error or interrupted); its history entry."""
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
                return history[prompt_id]
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.text_log()[-4000:]}")

    def run(self, prompt: dict, timeout: float = 300, on_start=None) -> dict:
        return self.wait(self.queue(prompt), timeout, on_start)

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


def saved_files(entry: dict, suffix: str) -> list[dict]:
    """The files a finished prompt saved (``{"filename", "subfolder", "type"}``) that end in ``suffix``."""
    return [v for out in entry["outputs"].values() for v in out.get("images", []) + out.get("video", [])
            if str(v.get("filename", "")).endswith(suffix)]


# ------------------------------------------------------------------------- UI-format workflows


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
