"""The shipped workflows as a user meets them in ComfyUI's template browser and Missing Models panel:
download metadata for every model file, a thumbnail each, a title, and no node drawn over another."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tidy = _load("tidy_workflows", ROOT / "scripts" / "tidy_workflows.py")
model_files = _load("model_files_for_test", ROOT / "nodes" / "model_files.py")

LOADERS = {"AnyTalkerModelLoader", "AnyTalkerNativeModelLoader", "AnyTalkerWav2VecLoader", "CLIPLoader", "CLIPVisionLoader", "VAELoader"}
ALLOWED_URL = ("https://huggingface.co/", "https://civitai.com/")  # what the frontend's download accepts


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_model_file_has_download_metadata(path):
    workflow = json.loads(path.read_text())
    for node in workflow["nodes"]:
        if node["type"] not in LOADERS:
            continue
        name = node["widgets_values"][0]
        assert name in model_files.BY_NAME, f"{path.name}: {node['type']} names '{name}', unknown to nodes/model_files.py"
        models = node["properties"].get("models")
        assert models == [model_files.BY_NAME[name].metadata()], f"{path.name}: {node['type']} lacks model metadata"
        assert models[0]["url"].startswith(ALLOWED_URL)
        assert models[0]["url"].endswith((".safetensors", ".pth", ".sft"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_layout_title_and_thumbnail(path):
    from PIL import Image

    workflow = json.loads(path.read_text())
    assert tidy.overlaps(workflow) == [], f"{path.name}: overlapping nodes"
    assert workflow["extra"]["info"]["title"].startswith("AnyTalker")
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{thumb.name} missing: run python scripts/tidy_workflows.py"
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.width == 512 and im.height > 100


def test_file_names_are_template_titles(tmp_path):
    """ComfyUI's template browser titles a pack's templates with their file names (see scripts/tidy_workflows.py)."""
    assert [tidy.template_name_problem(p) for p in WORKFLOWS] == [None] * len(WORKFLOWS)
    assert {p.stem for p in WORKFLOWS} >= {"AnyTalker - two people", "AnyTalker native - long clip"}
    for bad in ("anytalker_two_people", "AnyTalker - Two_people", "two people", "AnyTalker - " + "x" * 40):
        assert "template browser shows the file name" in tidy.template_name_problem(tmp_path / f"{bad}.json")


def test_tidy_check_is_clean():
    """`python scripts/tidy_workflows.py --check` finds nothing to do on the committed workflows."""
    assert tidy.main(["--check"]) == 0


def test_overlap_detection_and_layout_fix():
    wf = {"nodes": [{"id": 1, "pos": [0, 0], "size": [300, 130]}, {"id": 2, "pos": [20, 100], "size": [300, 130]},
                    {"id": 3, "pos": [200, 0], "size": [100, 50]}]}
    assert set(tidy.overlaps(wf)) == {(1, 2), (1, 3)}
    assert tidy.layout(wf) and tidy.overlaps(wf) == []
    assert not tidy.layout(wf)  # idempotent
