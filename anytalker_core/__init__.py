"""AnyTalker core: the model, inputs, sampling and metrics, with no ComfyUI imports.

Modules are imported lazily by their users; importing this package is cheap. The layout (see
docs/ARCHITECTURE.md): ``model/`` the DiT, ``generation/`` image + voices -> video, ``io/`` files,
``audio/`` ``faces/`` ``encoders/`` ``sampling/`` the inputs and the solver, ``metrics/`` ``parity/``
evaluation, ``cli/`` the ``anytalker`` command, ``testing/`` tiny models for tests and ``--demo``.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

#: modules of the flat layout (before 0.2) -> where they live now; importing the old name still works
MOVED_MODULES = {
    "anytalker_core.afca": "anytalker_core.model.afca",
    "anytalker_core.attention": "anytalker_core.model.attention",
    "anytalker_core.checkpoint": "anytalker_core.model.checkpoint",
    "anytalker_core.config": "anytalker_core.model.config",
    "anytalker_core.dit": "anytalker_core.model.dit",
    "anytalker_core.embeddings": "anytalker_core.model.embeddings",
    "anytalker_core.layout": "anytalker_core.model.layout",
    "anytalker_core.norms": "anytalker_core.model.norms",
    "anytalker_core.projections": "anytalker_core.model.projections",
    "anytalker_core.quantization": "anytalker_core.model.quantization",
    "anytalker_core.conditioning": "anytalker_core.model.speaker",
    "anytalker_core.pipeline": "anytalker_core.generation.pipeline",
    "anytalker_core.long_video": "anytalker_core.generation.windows",
    "anytalker_core.media": "anytalker_core.io.media",
    "anytalker_core.model_paths": "anytalker_core.io.model_paths",
    "anytalker_core.demo": "anytalker_core.testing.demo",
    "anytalker_core.generate_command": "anytalker_core.cli.generate",
    "anytalker_core.checkpoint_command": "anytalker_core.cli.convert",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module name to its new module, with a DeprecationWarning naming the new one."""

    def find_spec(self, name, path=None, target=None):
        if name in MOVED_MODULES:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        new = MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} is deprecated: import {new} instead", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        """The module is the new one, already executed."""


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
