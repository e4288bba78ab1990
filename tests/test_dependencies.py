"""Declared dependencies equal imported ones: every third-party package the code imports is declared
(pyproject.toml: dependencies or an extra) and every declared runtime dependency is imported."""

from __future__ import annotations

import ast
import re
import sys
import tomllib

from conftest import REPO

#: import name -> distribution name, where they differ
DIST = {"PIL": "pillow", "cv2": "opencv-python-headless", "skimage": "scikit-image", "yaml": "pyyaml"}
#: imported only when present, and said so where they are used (optional kernels, optional text cleaning,
#: DeepSpeed checkpoints) or installed by scripts/setup.sh by hand (mediapipe: --no-deps); ComfyUI's own
HOST_OR_OPTIONAL = {"flash_attn", "sageattention", "ftfy", "deepspeed", "mediapipe", "asteroid", "comfy", "comfy_api",
                    "comfy_extras", "folder_paths", "latent_preview", "server", "nodes"}


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {_requirement_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    return core, extras


def _imported() -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    own = {"anytalker_core", "nodes", "train"}
    found = set()
    for root in ("anytalker_core", "nodes", "train"):
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in stdlib and top not in own and top not in HOST_OR_OPTIONAL:
                        found.add(DIST.get(top, top).lower().replace("_", "-"))
    return found


def test_every_imported_package_is_declared():
    core, extras = _declared()
    missing = sorted(_imported() - core - extras)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_runtime_dependency_is_imported():
    core, _ = _declared()
    unused = sorted(core - _imported())
    assert not unused, f"declared in pyproject.toml but imported nowhere: {unused}"


def test_requirements_txt_is_pyproject_without_torch():
    core, _ = _declared()
    lines = [ln.strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    reqs = {_requirement_name(ln) for ln in lines if ln and not ln.startswith("#")}
    assert reqs == core - {"torch"}
