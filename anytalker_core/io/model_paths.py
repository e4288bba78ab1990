"""Where each model file is looked for: ComfyUI's ``models/<folder>/`` layout under one models folder.

A user who already runs ComfyUI points ``--models-dir`` at ``ComfyUI/models`` and nothing moves:

=================  ==================  ====================================================================
role               folder              file (first match of the patterns wins)
=================  ==================  ====================================================================
``dit``            ``diffusion_models``  AnyTalker DiT: ``AnyTalker-1.3B*.safetensors``, ``1_3B-single-v1.pth``, ...
``text_encoder``   ``text_encoders``   UMT5-XXL encoder: ``umt5_xxl_*.safetensors`` (ComfyUI repackage) ...
``clip_vision``    ``clip_vision``     CLIP ViT-H/14: ``clip_vision_h.safetensors``
``vae``            ``vae``             Wan2.1 VAE: ``wan_2.1_vae.safetensors``
``wav2vec``        ``audio_encoders``  ``wav2vec2-base-960h/`` (Hugging Face folder) or a single file
=================  ==================  ====================================================================

Explicit paths (``--dit`` etc.) override the search for their role. :func:`resolve_model_paths`
checks every role first and raises one :class:`MissingModelError` that lists *every* missing file
with the folder it belongs in, so a user fixes the set in one go instead of one file per run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MissingModelError

log = logging.getLogger(__name__)

__all__ = ["ModelSpec", "MODEL_SPECS", "ModelPaths", "default_models_dir", "find_model", "resolve_model_paths",
           "ROLES", "MODELS_DIR_ENV"]

MODELS_DIR_ENV = "ANYTALKER_MODELS_DIR"

MODEL_EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


@dataclass(frozen=True)
class ModelSpec:
    """One model a generation needs.

    Attributes:
        role: key in :class:`ModelPaths` (``"dit"``, ``"vae"``, ...).
        folder: ComfyUI model folder name under the models folder.
        patterns: glob patterns tried in order inside ``folder`` (case-insensitive match on the name).
        suggested: the file (or folder) name to tell the user to download.
        source: where the file comes from, for the message.
        option: the CLI option that gives an explicit path.
        allow_dir: a folder (Hugging Face layout) is acceptable as well as a single file.
    """

    role: str
    folder: str
    patterns: tuple[str, ...]
    suggested: str
    source: str
    option: str
    allow_dir: bool = False


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.role: spec
    for spec in (
        ModelSpec(
            "dit", "diffusion_models",
            ("*anytalker*", "1_3b-single-v1*", "14b-multi-v1*", "*af2v*", "*a2v*"),
            "AnyTalker-1.3B.safetensors (or the released 1_3B-single-v1.pth)",
            "Hugging Face zzz66/AnyTalker-1.3B (convert with `anytalker convert`, or use the .pth as is)",
            "--dit",
        ),
        ModelSpec(
            "text_encoder", "text_encoders",
            ("umt5_xxl*", "umt5-xxl*", "models_t5_umt5-xxl*", "*umt5*"),
            "umt5_xxl_fp16.safetensors",
            "Comfy-Org/Wan_2.1_ComfyUI_repackaged (split_files/text_encoders)",
            "--text-encoder",
            allow_dir=True,
        ),
        ModelSpec(
            "clip_vision", "clip_vision",
            ("clip_vision_h*", "*vit-h*", "*vit_h*", "models_clip_open-clip-xlm-roberta-large-vit-huge-14*"),
            "clip_vision_h.safetensors",
            "Comfy-Org/Wan_2.1_ComfyUI_repackaged (split_files/clip_vision)",
            "--clip-vision",
        ),
        ModelSpec(
            "vae", "vae",
            ("wan_2.1_vae*", "wan2.1_vae*", "wan_2_1_vae*", "*wan*vae*"),
            "wan_2.1_vae.safetensors",
            "Comfy-Org/Wan_2.1_ComfyUI_repackaged (split_files/vae)",
            "--vae",
        ),
        ModelSpec(
            "wav2vec", "audio_encoders",
            ("wav2vec2-base-960h*", "wav2vec2_base_960h*", "*wav2vec2-base*", "*wav2vec*"),
            "wav2vec2-base-960h/ (folder with config.json, model.safetensors, preprocessor_config.json)",
            "Hugging Face facebook/wav2vec2-base-960h",
            "--wav2vec",
            allow_dir=True,
        ),
    )
}

ROLES: tuple[str, ...] = tuple(MODEL_SPECS)


@dataclass
class ModelPaths:
    """Resolved model files, one per role. ``dit_config`` is an optional JSON beside the DiT."""

    dit: Path
    text_encoder: Path
    clip_vision: Path
    vae: Path
    wav2vec: Path
    dit_config: Path | None = None
    insightface_root: Path | None = None
    extra: dict[str, Path] = field(default_factory=dict)

    def describe(self) -> str:
        """One line per model, for the log."""
        rows = [f"  {role:<13} {getattr(self, role)}" for role in ROLES]
        if self.dit_config:
            rows.append(f"  {'dit_config':<13} {self.dit_config}")
        return "\n".join(rows)


def default_models_dir() -> Path:
    """``$ANYTALKER_MODELS_DIR`` if set, else ``./models``."""
    env = os.environ.get(MODELS_DIR_ENV)
    return Path(env).expanduser() if env else Path("models")


def _is_candidate(path: Path, spec: ModelSpec) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return spec.allow_dir and any(path.iterdir())
    return path.is_file() and path.suffix.lower() in MODEL_EXTENSIONS


def find_model(models_dir: str | Path, role: str) -> Path | None:
    """The first file (or folder) in ``models_dir/<folder>/`` matching the role's patterns, or None.

    Names are matched case-insensitively; within one pattern, ``.safetensors`` wins over other
    formats and then the alphabetically first name, so the choice is deterministic.
    """
    spec = MODEL_SPECS[role]
    folder = Path(models_dir) / spec.folder
    if not folder.is_dir():
        return None
    entries = sorted(folder.iterdir(), key=lambda p: (p.suffix.lower() != ".safetensors", p.name.lower()))
    import fnmatch

    for pattern in spec.patterns:
        for entry in entries:
            if fnmatch.fnmatch(entry.name.lower(), pattern) and _is_candidate(entry, spec):
                return entry
    return None


def _dit_config_beside(dit: Path) -> Path | None:
    """``<dit stem>.json`` or ``<dit stem>.config.json`` next to the DiT, if present."""
    if dit.is_dir():
        cand = dit / "config.json"
        return cand if cand.is_file() else None
    for cand in (dit.with_suffix(".json"), dit.with_name(dit.stem + ".config.json")):
        if cand.is_file():
            return cand
    return None


def resolve_model_paths(
    models_dir: str | Path | None = None,
    overrides: dict[str, str | Path | None] | None = None,
    dit_config: str | Path | None = None,
) -> ModelPaths:
    """Find every model file, explicit paths first, then ``models_dir/<folder>/``.

    Args:
        models_dir: the ComfyUI-style ``models`` folder (default :func:`default_models_dir`).
        overrides: ``{role: path}`` explicit files (``None`` values are ignored).
        dit_config: explicit DiT config JSON; else a ``.json`` beside the DiT is used when present.
    Raises:
        MissingModelError: listing every missing file at once, each with its folder, suggested name
            and source.
    """
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown model roles {sorted(unknown)}; expected some of {list(ROLES)}")
    found: dict[str, Path] = {}
    problems: list[str] = []
    for role, spec in MODEL_SPECS.items():
        if role in overrides:
            path = Path(overrides[role]).expanduser()
            if path.exists() and (path.is_file() or (spec.allow_dir and path.is_dir())):
                found[role] = path
            else:
                what = "is a folder, expected a file" if path.is_dir() else "does not exist"
                problems.append(f"  - {spec.option} {path}: {what} ({spec.suggested}; from {spec.source})")
            continue
        path = find_model(models_dir, role)
        if path is None:
            problems.append(
                f"  - {models_dir / spec.folder}/{spec.suggested}\n"
                f"      from {spec.source}; or pass {spec.option} PATH"
            )
        else:
            found[role] = path
    config_path = None
    if dit_config is not None:
        config_path = Path(dit_config).expanduser()
        if not config_path.is_file():
            problems.append(f"  - --dit-config {config_path}: does not exist (the DiT's config JSON)")
    elif "dit" in found:
        config_path = _dit_config_beside(found["dit"])
    if problems:
        raise MissingModelError(
            f"{len(problems)} model file(s) missing (models folder: {models_dir.resolve()}):\n"
            + "\n".join(problems)
            + "\nPut each file in the folder shown (ComfyUI's models/ layout works as is), "
            "or try `anytalker generate --demo` to run every stage with tiny random weights."
        )
    insightface = models_dir / "insightface"
    paths = ModelPaths(**found, dit_config=config_path,
                       insightface_root=insightface if insightface.is_dir() else None)
    log.info("model files:\n%s", paths.describe())
    return paths


def packaged_file(package: str, relative: str, missing_package: str, missing_file: str) -> Path:
    """A model file that ships inside an installed package's wheel (Silero VAD, Resemblyzer's GE2E, mediapipe's
    BlazeFace), found without importing the package.

    ``missing_package`` is the message when the package is not installed; ``missing_file`` when it is but the
    file is not there (``{path}`` in it is replaced by the path looked at). Both raise :class:`MissingModelError`.
    """
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError(missing_package)
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise MissingModelError(missing_file.replace("{path}", str(path)))
    return path
