"""The shipped workflows in ComfyUI's real web frontend, in a real (headless) Chromium.

ComfyUI serves its frontend (``comfyui-frontend-package``, from ComfyUI's requirements); Debian's
``chromium`` is driven by ``playwright`` through ``executable_path`` (playwright's own browser download
is not used). Every workflow in ``workflows/`` is loaded into the canvas the way a user opens it, and
then: no missing-node dialog, every node type known to the frontend, no node in an error state, and
no required input left unconnected in the prompt the frontend itself builds from the graph
(``app.graphToPrompt``). One workflow is then queued from the page (its model widgets set to the tiny
models, its two full-size loaders swapped for the test loaders) and its video must appear.
A screenshot per workflow goes to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from comfyui_harness import IMAGES, saved_files
from conftest import REPO

pytestmark = [pytest.mark.comfyui, pytest.mark.browser, pytest.mark.slow]

WORKFLOWS = sorted(p.name for p in (REPO / "workflows").glob("*.json"))
# the launch flags for a sandboxed, offline machine; a fresh profile every run
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# What the page reports about the loaded graph (runs in the browser).
INSPECT_GRAPH = """async () => {
  const app = window.app ?? window.comfyAPI?.app?.app;
  const registered = window.LiteGraph?.registered_node_types ?? {};
  const nodes = app.graph.nodes ?? app.graph._nodes;
  const dialogs = [...document.querySelectorAll('.p-dialog, [role="dialog"]')]
      .filter(d => d.offsetParent !== null).map(d => d.innerText.slice(0, 400));
  const toasts = [...document.querySelectorAll('.p-toast-message-error')].map(t => t.innerText.slice(0, 400));
  const report = {nodes: nodes.length, unknown: [], errors: [], dialogs, toasts};
  for (const node of nodes) {
    if (!(node.type in registered)) report.unknown.push(`${node.id}:${node.type}`);
    if (node.has_errors) report.errors.push(`${node.id}:${node.type}`);
  }
  const prompt = await app.graphToPrompt();
  report.prompt = prompt.output;
  return report;
}"""


def provide_workflow_files(server) -> None:
    """The files the shipped workflows name, as a user who followed docs/comfyui.md has them (here: the
    tiny models and test inputs under those names), so a combo value is never 'not in the list'."""
    import shutil

    import numpy as np

    from anytalker_core.io.media import write_video

    models, inputs, paths = server.base / "models", server.base / "input", server.paths
    links = {"diffusion_models/1_3B-single-v1.pth": paths.dit,
             "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors": paths.text_encoder,
             "clip_vision/clip_vision_h.safetensors": paths.clip_vision, "vae/wan_2.1_vae.safetensors": paths.vae,
             "audio_encoders/wav2vec2-base-960h.safetensors": Path(paths.wav2vec) / "model.safetensors",
             # the LoRA workflow's placeholder: a user picks their own; any file of that name lists it
             "loras/your_wan2.1_lora.safetensors": paths.dit}
    for name, target in links.items():
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        if not (models / name).exists():
            (models / name).symlink_to(Path(target).resolve())
    for people, image in IMAGES.items():
        shutil.copyfile(inputs / image, inputs / f"anytalker_{people}_people.png")
    shutil.copyfile(inputs / IMAGES[1], inputs / "anytalker_1_person.png")
    for k in (1, 2, 3):
        shutil.copyfile(inputs / f"person{k}.wav", inputs / f"speaker{k}.wav")
    if not (inputs / "anytalker_two_people.mp4").exists():
        from PIL import Image

        frame = np.asarray(Image.open(inputs / IMAGES[2]).convert("RGB"))
        write_video(inputs / "anytalker_two_people.mp4", np.repeat(frame[None], 12, axis=0), 24,
                    audio=np.zeros(8000, np.float32), sample_rate=16000)


@pytest.fixture(scope="module")
def page(comfyui_server, chromium_executable, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    provide_workflow_files(comfyui_server)  # before the page reads the file lists
    # a returning user: no first-run template browser over the canvas
    comfyui_server.post("/settings/Comfy.TutorialCompleted", True)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 2400, "height": 1350})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            console = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.goto(comfyui_server.url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => { const app = window.app ?? window.comfyAPI?.app?.app;"
                                   " return app?.graph != null && app?.canvas != null; }", timeout=120_000)
            page.wait_for_timeout(1500)
            page.console = console
            yield page
        finally:
            context.close()


def close_dialogs(page) -> None:
    """Dismiss open dialogs and toasts, so that what a load shows is the load's own."""
    for _ in range(3):
        page.keyboard.press("Escape")
        page.wait_for_timeout(150)
    page.evaluate("() => document.querySelectorAll('.p-toast-close-button').forEach(b => b.click())")
    page.wait_for_timeout(300)


def load(page, workflow: dict) -> dict:
    close_dialogs(page)
    page.evaluate("async (wf) => { const app = window.app ?? window.comfyAPI.app.app; await app.loadGraphData(wf); }",
                  workflow)
    page.wait_for_timeout(800)
    return page.evaluate(INSPECT_GRAPH)


def unconnected_required(prompt: dict, object_info: dict) -> list[str]:
    """Required inputs (sockets and widgets) missing from the frontend's API prompt."""
    missing = []
    for node_id, node in prompt.items():
        info = object_info[node["class_type"]]
        for name in info["input_order"].get("required", []):
            spec = info["input"]["required"][name]
            if spec[0] == "COMFY_AUTOGROW_V3":  # a growing list: its first slot is the required one
                if not any(k.startswith(f"{name}.") for k in node["inputs"]):
                    missing.append(f"{node_id}:{node['class_type']}.{name}")
            elif name not in node["inputs"]:
                missing.append(f"{node_id}:{node['class_type']}.{name}")
    return missing


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_loads_in_the_frontend(page, comfyui_server, artifacts_dir, name):
    workflow = json.loads((REPO / "workflows" / name).read_text())
    report = load(page, workflow)
    shots = artifacts_dir / "browser"
    shots.mkdir(exist_ok=True)
    page.screenshot(path=str(shots / f"{Path(name).stem}.png"))
    assert report["nodes"] == len(workflow["nodes"]), report
    assert not report["unknown"], f"node types the frontend does not know: {report['unknown']}"
    assert not [d for d in report["dialogs"] if "missing" in d.lower()], report["dialogs"]
    assert not report["errors"], f"nodes in an error state: {report['errors']}"
    assert not report["toasts"], f"error messages after loading: {report['toasts']}"
    object_info = comfyui_server.get("/object_info")
    assert not unconnected_required(report["prompt"], object_info)


def tiny_one_person(paths) -> dict:
    """The one-person workflow with the two loaders ComfyUI cannot give tiny sizes swapped for the test
    loaders (same output types, same links); the rest is edited in the page like a user would."""
    workflow = json.loads((REPO / "workflows" / "AnyTalker - one person.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "CLIPLoader":
            node.update(type="AnyTalkerTestCLIPLoader", widgets_values=[str(paths.text_encoder)])
        elif node["type"] == "CLIPVisionLoader":
            node.update(type="AnyTalkerTestClipVisionLoader", widgets_values=[str(paths.clip_vision)])
    return workflow


SET_WIDGETS = """(edits) => {
  const app = window.app ?? window.comfyAPI.app.app;
  const done = [];
  for (const node of (app.graph.nodes ?? app.graph._nodes)) {
    const mine = edits[node.type] ?? {};
    for (const w of node.widgets ?? []) {
      if (w.name in mine) { w.value = mine[w.name]; w.callback?.(w.value); done.push(`${node.type}.${w.name}`); }
    }
  }
  app.graph.setDirtyCanvas(true, true);
  return done;
}"""


def test_queue_a_workflow_from_the_page(page, comfyui_server, artifacts_dir):
    paths = comfyui_server.paths
    report = load(page, tiny_one_person(paths))
    assert not report["unknown"] and not report["errors"], report
    edits = {
        "AnyTalkerModelLoader": {"model_name": Path(paths.dit).name},
        "AnyTalkerWav2VecLoader": {"model_name": f"{Path(paths.wav2vec).name}/model.safetensors"},
        "VAELoader": {"vae_name": Path(paths.vae).name},
        "LoadImage": {"image": IMAGES[1]},
        "LoadAudio": {"audio": "person1.wav"},
        "AnyTalkerAudioEncode": {"frame_count": 9},
        "AnyTalkerFaceMasks": {"boxes": "30,20,66,60"},
        "AnyTalkerConditioning": {"max_pixels": 64 * 64},
        "AnyTalkerLongSampler": {"steps": 2},  # the shipped graphs sample in 81-frame windows (here: one)
    }
    done = page.evaluate(SET_WIDGETS, edits)
    assert len(done) == sum(len(v) for v in edits.values()), done
    before = set(comfyui_server.get("/history"))
    close_dialogs(page)
    page.get_by_role("button", name="Run", exact=True).filter(visible=True).first.click()  # the toolbar Run button
    end = time.monotonic() + 300
    entry = None
    while time.monotonic() < end:
        new = {k: v for k, v in comfyui_server.get("/history").items() if k not in before}
        finished = [v for v in new.values() if v.get("status", {}).get("completed") is not None]
        if finished:
            entry = finished[0]
            break
        time.sleep(0.5)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(artifacts_dir / "browser" / "queued_one_person.png"))
    assert entry is not None, "the queued workflow did not finish in 300 s:\n" + "\n".join(page.console[-20:])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:3000]
    videos = saved_files(entry, ".mp4")
    assert len(videos) == 1
    video = comfyui_server.base / "output" / videos[0]["subfolder"] / videos[0]["filename"]
    assert video.stat().st_size > 1000


CARD_THUMBNAILS = """(titles) => titles.map(title => {
  const label = [...document.querySelectorAll('[role="dialog"] *')]
      .find(e => e.childElementCount === 0 && e.textContent.trim() === title);
  let card = label;
  while (card && !card.querySelector('img')) card = card.parentElement;
  const img = card?.querySelector('img');
  return [title, label ? (img && img.complete ? img.naturalWidth : 0) : -1];
})"""


def test_template_browser_shows_titles_and_thumbnails(page, comfyui_server, artifacts_dir):
    """Issue 11: in the template browser (Browse Templates) the pack's workflows carry readable titles and
    their thumbnails (``<title>.jpg``, fetched from the pack's template folder), and a click opens one."""
    import urllib.request
    from urllib.parse import quote, unquote

    pack = "ComfyUI-AnyTalker"
    expected = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
    fetched = {}

    def on_response(response):
        if f"/workflow_templates/{pack}/" in response.url and response.url.endswith(".jpg"):
            fetched[unquote(response.url.rsplit("/", 1)[-1])] = (response.status, response.headers.get("content-type"))

    close_dialogs(page)
    page.on("response", on_response)
    try:
        page.evaluate("async () => { const app = window.app ?? window.comfyAPI.app.app;"
                      " await app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
        page.get_by_text(pack, exact=True).first.click(timeout=30_000)  # the pack's entry under Extensions
        page.wait_for_function(f"() => ({CARD_THUMBNAILS})({json.dumps(expected)}).every(t => t[1] > 0)",
                               timeout=60_000)
    finally:
        page.remove_listener("response", on_response)
    page.screenshot(path=str(artifacts_dir / "browser" / "template_browser.png"))
    assert dict(page.evaluate(CARD_THUMBNAILS, expected)) == dict.fromkeys(expected, 512)  # the 512-wide JPEGs
    # what the page fetched over the network came from the pack's folder as JPEGs (thumbnails an earlier
    # test already showed may come from the browser's cache, without a network response) ...
    assert fetched and set(fetched) <= {f"{t}.jpg" for t in expected}
    assert set(fetched.values()) == {(200, "image/jpeg")}
    # ... and the server serves every card's thumbnail at the address the frontend asks for
    for title in expected:
        url = f"{comfyui_server.url}/api/workflow_templates/{pack}/{quote(title)}.jpg"
        with urllib.request.urlopen(url, timeout=60) as r:
            assert (r.status, r.headers.get("content-type")) == (200, "image/jpeg"), title
            assert r.read(3) == b"\xff\xd8\xff", title  # a JPEG
    title = "AnyTalker - two people"
    page.get_by_text(title, exact=True).first.click()
    page.wait_for_timeout(1500)
    workflow = json.loads((REPO / "workflows" / f"{title}.json").read_text())
    nodes = page.evaluate("() => { const app = window.app ?? window.comfyAPI.app.app;"
                          " return (app.graph.nodes ?? app.graph._nodes).map(n => n.type).sort(); }")
    assert nodes == sorted(n["type"] for n in workflow["nodes"])
