"""AnyTalker core: the model, inputs, sampling and metrics, with no ComfyUI imports.

Modules are imported lazily by their users; importing this package is cheap.
"""

__version__ = "0.1.0"
