"""anytalker_core.io.atomic: the one atomic writer (and that the project's writers use it)."""

import ast
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anytalker_core.io.atomic import atomic_path, save_safetensors_atomic, write_json_atomic, write_text_atomic
from conftest import REPO


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_writers_round_trip_and_create_folders(tmp_path):
    write_json_atomic(tmp_path / "a" / "b.json", {"z": 1, "a": [1, 2]})
    assert (tmp_path / "a" / "b.json").read_text().startswith('{\n  "a"')
    t = {"x": torch.arange(6).reshape(2, 3).t()}  # non-contiguous
    save_safetensors_atomic(tmp_path / "c" / "t.safetensors", t, {"k": "v"})
    assert torch.equal(load_file(str(tmp_path / "c" / "t.safetensors"))["x"], t["x"])
    with atomic_path(tmp_path / "p.png", suffix=".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path


def test_no_other_rename_into_place_in_the_code():
    """os.replace/rename appears only in io/atomic.py (and train's directory swap of checkpoint folders)."""
    allowed = {Path("anytalker_core/io/atomic.py"), Path("train/checkpointing.py")}
    offenders = []
    for root in ("anytalker_core", "nodes", "train"):
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO)
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Attribute) and node.attr in ("replace", "rename", "mkstemp")
                        and isinstance(node.value, ast.Name) and node.value.id in ("os", "tempfile")
                        and rel not in allowed):
                    offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders
