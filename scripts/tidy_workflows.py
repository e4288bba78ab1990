"""Keep the shipped workflows tidy: model download metadata, a layout without overlapping nodes, thumbnails.

    python scripts/tidy_workflows.py            # rewrite workflows/*.json in place, write missing thumbnails
    python scripts/tidy_workflows.py --check    # exit 1 and list what is out of date (tests run the same checks)

* every node whose widgets name a file of ``nodes/model_files.py`` gets ``properties.models`` (ComfyUI's
  Missing Models panel offers the download from it instead of listing the file as "Unknown");
* nodes are laid out in columns (by x) and stacked without overlap, title bars included;
* every file name is a readable title (``AnyTalker - two people.json``): ComfyUI 0.29's template browser
  (frontend 1.47) titles a custom node pack's templates with their file names — ``GET /workflow_templates``
  lists only the names, and the frontend shows ``{title: name}`` with ``<name>.jpg`` beside it as the
  thumbnail; it reads no index or title field for them. A bad name is reported, not renamed;
* ``workflows/<name>.jpg`` (the template browser's thumbnail) shows the numbered-face preview of a real photo
  (scikit-image's astronaut, side by side once per person) with the workflow's title.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _model_files():
    """``nodes/model_files.py`` loaded by path: it has no ComfyUI imports, but ``nodes/__init__`` does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("anytalker_model_files", ROOT / "nodes" / "model_files.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


BY_NAME = _model_files().BY_NAME

WORKFLOWS = ROOT / "workflows"
TITLE_H = 30  # LiteGraph draws the title bar above pos[1]
GAP = 40
COLUMN_GAP = 60


def model_metadata(workflow: dict) -> bool:
    """Add/refresh ``properties.models`` on nodes whose widgets name a known model file. True if changed."""
    changed = False
    for node in workflow["nodes"]:
        values = node.get("widgets_values") or []
        values = values.values() if isinstance(values, dict) else values
        models = [BY_NAME[v].metadata() for v in values if isinstance(v, str) and v in BY_NAME]
        props = node.setdefault("properties", {})
        if models and props.get("models") != models:
            props["models"] = models
            changed = True
    return changed


def overlaps(workflow: dict) -> list[tuple[int, int]]:
    """Pairs of node ids whose boxes (title bar included) intersect."""
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - TITLE_H, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in workflow["nodes"]]
    bad = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]:
                bad.append((a[0], b[0]))
    return bad


def layout(workflow: dict) -> bool:
    """Columns by x (nodes starting within 100 px of a column's first node), stacked top to bottom with a gap;
    a column starts right of the widest node of the column before. True if any position changed."""
    nodes = sorted(workflow["nodes"], key=lambda n: (n["pos"][0], n["pos"][1]))
    columns: list[list[dict]] = []
    for node in nodes:
        if columns and node["pos"][0] - columns[-1][0]["pos"][0] < 100:
            columns[-1].append(node)
        else:
            columns.append([node])
    changed = False
    x = None
    for column in columns:
        column.sort(key=lambda n: n["pos"][1])
        left = column[0]["pos"][0] if x is None else max(column[0]["pos"][0], x)
        y = None
        for node in column:
            top = node["pos"][1] if y is None else max(node["pos"][1], y + TITLE_H)
            if [left, top] != list(node["pos"]):
                node["pos"] = [left, top]
                changed = True
            y = top + node["size"][1] + GAP
        x = left + max(n["size"][0] for n in column) + COLUMN_GAP
    return changed


#: what the template browser shows as the title: the pack's name, the route, what the workflow does
TEMPLATE_NAME = re.compile(r"AnyTalker( native)? - [A-Za-z0-9][A-Za-z0-9 ()]*")


def template_name_problem(path: Path) -> str | None:
    """Why ``path``'s file name is not a readable template title (None when it is)."""
    if TEMPLATE_NAME.fullmatch(path.stem) and len(path.stem) <= 48:
        return None
    return (f"{path.name}: the template browser shows the file name as the title; name it like "
            "'AnyTalker - two people.json' / 'AnyTalker native - long clip.json' (letters, digits, spaces, "
            "at most 48 characters)")


def people_in(workflow: dict) -> int:
    for node in workflow["nodes"]:
        if node["type"] == "AnyTalkerFaceMasks" and node.get("widgets_values"):
            return int(node["widgets_values"][0])
    return 2  # the scoring workflow: a two-person clip


def thumbnail(workflow: dict, path: Path) -> None:
    """A 512-wide JPEG: the numbered-face preview of the demo photo, titled."""
    from PIL import Image, ImageDraw

    from anytalker_core.faces import draw_preview, load_detector, locate_faces
    from anytalker_core.testing.demo import demo_image

    n = people_in(workflow)
    image = demo_image(n, size=256)
    boxes = locate_faces(image, n, detector=load_detector("mediapipe"))  # the real detector, left to right
    preview = Image.fromarray(draw_preview(image, boxes))
    width = 512
    preview = preview.resize((width, max(1, round(preview.height * width / preview.width))))
    title = workflow.get("extra", {}).get("info", {}).get("title", path.stem)
    canvas = Image.new("RGB", (width, preview.height + 40), (24, 24, 28))
    canvas.paste(preview, (0, 40))
    ImageDraw.Draw(canvas).text((10, 12), title, fill=(235, 235, 235))
    canvas.save(path, "JPEG", quality=85)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report what is out of date (exit 1 if any)")
    args = parser.parse_args(argv)
    stale, bad_names = [], []
    for path in sorted(WORKFLOWS.glob("*.json")):
        problem = template_name_problem(path)
        if problem:
            bad_names.append(problem)
        workflow = json.loads(path.read_text())
        changed = model_metadata(workflow)
        changed = layout(workflow) or changed
        thumb = path.with_suffix(".jpg")
        if changed:
            stale.append(f"{path.name}: model metadata or layout")
            if not args.check:
                path.write_text(json.dumps(workflow, indent=2) + "\n")
        if not thumb.exists():
            stale.append(f"{thumb.name}: missing")
            if not args.check:
                thumbnail(workflow, thumb)
    for line in stale:
        print(("out of date: " if args.check else "updated: ") + line)
    for line in bad_names:
        print("rename: " + line)
    return 1 if (args.check and stale) or bad_names else 0


if __name__ == "__main__":
    sys.exit(main())
