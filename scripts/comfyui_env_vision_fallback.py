"""Make torchvision and torchaudio import in the ComfyUI *test* venv when their compiled parts do not load.

Run with that venv's python (scripts/comfyui_env.sh does, only when ``import torchvision, torchaudio``
fails). Beside the CPU torch 2.13 wheel, torchvision 0.28's ``_C.so`` does not register its ops, and
its ``_meta_registrations.py`` then fails on ``@torch.library.register_fake("torchvision::nms")``
("operator torchvision::nms does not exist"); torchaudio's ``lib/*.so`` do not load either. Both
packages have pure-Python fallbacks for everything ComfyUI imports at start, so:

* the compiled extension files are renamed to ``*.disabled`` (torchvision/_C.so, torchvision/image.so,
  torchaudio/lib/*.so), and
* each ``register_fake("torchvision::...")`` decorator is applied only when torchvision's ops loaded
  (``torchvision.extension._has_ops()``), as its ``register_meta`` helper already does.

Never run this on an environment you use for anything else.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        sys.exit(f"{name} is not installed in {sys.prefix}")
    return Path(spec.origin).parent


def disable(path: Path) -> None:
    if path.exists():
        path.rename(path.with_name(path.name + ".disabled"))
        print(f"disabled {path}")


def main() -> None:
    if sys.prefix == sys.base_prefix:
        sys.exit("run this with the ComfyUI test venv's python (it edits the installed torchvision/torchaudio)")
    vision = package_dir("torchvision")
    for name in ("_C.so", "image.so"):
        disable(vision / name)
    meta = vision / "_meta_registrations.py"
    text = meta.read_text()
    guard = ("\n\ndef _register_fake_if_ops(name):  # added by ComfyUI-AnyTalker's test env\n"
             "    return torch.library.register_fake(name) if torchvision.extension._has_ops() else (lambda fn: fn)\n")
    if "_register_fake_if_ops" not in text:
        anchor = "import torchvision.extension  # noqa: F401\n"
        if anchor not in text:
            sys.exit(f"{meta}: unexpected layout (no '{anchor.strip()}'); this torchvision needs another fix")
        text = text.replace(anchor, anchor + guard, 1)
        text = text.replace("@torch.library.register_fake(", "@_register_fake_if_ops(")
        meta.write_text(text)
        print(f"guarded the register_fake decorators in {meta}")
    audio = package_dir("torchaudio")
    for lib in sorted((audio / "lib").glob("*.so")):
        disable(lib)


if __name__ == "__main__":
    main()
