"""anytalker_core and train import with ComfyUI absent."""

import subprocess
import sys

from conftest import REPO

CORE_MODULES = ["anytalker_core", "anytalker_core.cli", "anytalker_core.parity", "anytalker_core.errors"]


def test_core_imports_without_comfyui():
    # A fresh interpreter in which importing any ComfyUI module fails loudly.
    code = (
        "import sys, importlib, pkgutil\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', 'comfy_extras', 'server'):\n"
        "            raise ImportError('ComfyUI import attempted: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import anytalker_core, train\n"
        "for pkg in (anytalker_core, train):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
