"""The shipped workflows as templates in the real ComfyUI's template browser (issue 11: titles, thumbnails).

ComfyUI 0.29 (``app/custom_node_manager.py``) answers ``GET /workflow_templates`` with every pack's template
*file names* and serves the files under ``/api/workflow_templates/<pack folder>/``; its frontend (1.47)
turns each name into a card ``{title: name}`` whose thumbnail is ``<name>.jpg`` from the same folder — it
reads no index or title field for a pack's templates. So the file names are the titles
(``AnyTalker - two people``), kept readable by ``scripts/tidy_workflows.py``. Checked here against the live
server's endpoints: the listed names, each template's JSON and its JPEG thumbnail.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.parse
import urllib.request

import pytest
from conftest import REPO

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

PACK = "ComfyUI-AnyTalker"  # the folder name in custom_nodes/ (what ComfyUI-Manager clones it as)
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


def _tidy():
    spec = importlib.util.spec_from_file_location("tidy_workflows", REPO / "scripts" / "tidy_workflows.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def fetch(server, path: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(server.url + urllib.parse.quote(path), timeout=60) as r:
        return r.headers.get("Content-Type", ""), r.read()


def test_template_browser_gets_titles_and_thumbnails(comfyui_server):
    listed = comfyui_server.get("/workflow_templates")
    names = listed[PACK]
    assert sorted(names) == sorted(p.stem for p in WORKFLOWS)
    tidy = _tidy()
    assert [tidy.template_name_problem(REPO / "workflows" / f"{n}.json") for n in names] == [None] * len(names)
    assert "AnyTalker - two people" in names and "AnyTalker native - long clip" in names
    for name in names:
        kind, body = fetch(comfyui_server, f"/api/workflow_templates/{PACK}/{name}.json")
        assert json.loads(body) == json.loads((REPO / "workflows" / f"{name}.json").read_text()), name
        kind, body = fetch(comfyui_server, f"/api/workflow_templates/{PACK}/{name}.jpg")
        assert kind == "image/jpeg" and body[:3] == b"\xff\xd8\xff", (name, kind)
