"""ComfyUI entry point of the AnyTalker node pack (V3 API: ``comfy_entrypoint``).

ComfyUI imports this folder as a package. ``anytalker_core`` is the pack's library; when it is not
installed (``pip install -e .``), the pack folder is appended to ``sys.path`` so it imports from here.
The nodes live in ``./nodes`` (imported relatively: ComfyUI has its own top-level ``nodes`` module).
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("anytalker_core") is None:
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))

# Outside ComfyUI (pytest collecting this folder, a plain `import`), there is no node API to register
# with; inside ComfyUI `comfy_api` is always importable and the nodes load (or fail loudly).
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
