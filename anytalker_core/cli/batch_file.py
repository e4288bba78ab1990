"""``anytalker generate --batch FILE.json``: reading the batch file into :class:`BatchTask` entries.

See :func:`load_batch_file` for the two accepted formats (the reference's ``input_example`` JSON and
MultiTalk-style task lists) and how relative paths are resolved.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

log = logging.getLogger(__name__)

__all__ = ["BatchTask", "load_batch_file"]


@dataclass
class BatchTask:
    """One clip of a batch file (or of the command line).

    Relative paths in a batch file are resolved beside the file, else in the current folder (the
    reference's ``input_example`` file names them from the repository root). ``image_label`` and
    ``audio_labels`` name the inputs in messages as the user wrote them (``tasks.json['a'].image_path``);
    ``problem`` is set, instead of raising, for an entry that cannot be used (the batch runs the others).
    """

    name: str
    image: Path | None
    audio: list[Path]
    prompt: str
    audio_mode: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    boxes: list[list[float]] | None = None
    image_label: str = "--image"
    audio_labels: list[str] = field(default_factory=list)
    problem: str | None = None


def _as_path(value, base: Path, what: str) -> Path:
    """A batch file's path: absolute as is; relative beside the batch file, else in the current folder."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what}: expected a file path string, got {value!r}")
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    beside = base / path
    if not beside.exists() and (Path.cwd() / path).exists():
        return Path.cwd() / path
    return beside


def _parse_task(name: str, data: dict, base: Path, where: str) -> BatchTask:
    """One task in either accepted style (see :func:`load_batch_file`)."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object with the image, audio and prompt, got {type(data).__name__}")
    image_value = data.get("image_path", data.get("cond_image", data.get("image")))
    if image_value is None:
        raise InputError(f"{where}: no image; expected 'image_path' (or 'cond_image')")
    image_key = next(k for k in ("image_path", "cond_image", "image") if k in data)
    image = _as_path(image_value, base, f"{where}.{image_key}")

    if "audio_list" in data:
        audio_values = data["audio_list"]
        if not isinstance(audio_values, list):
            raise InputError(f"{where}.audio_list: expected a list of audio paths, left to right")
        labels = [f"{where}.audio_list[{j}]" for j in range(len(audio_values))]
    elif "cond_audio" in data:
        cond = data["cond_audio"]
        if not isinstance(cond, dict):
            raise InputError(f"{where}.cond_audio: expected {{'person1': path, 'person2': path, ...}}")

        def person_index(key: str) -> int:
            digits = "".join(ch for ch in key if ch.isdigit())
            if not digits:
                raise InputError(f"{where}.cond_audio: key '{key}' should be person1, person2, ... (left to right)")
            return int(digits)

        keys = sorted(cond, key=person_index)
        audio_values = [cond[k] for k in keys]
        labels = [f"{where}.cond_audio.{k}" for k in keys]
    elif "audio_left" in data or "audio_right" in data:
        keys = [k for k in ("audio_left", "audio_right") if data.get(k)]
        audio_values = [data[k] for k in keys]
        labels = [f"{where}.{k}" for k in keys]
    elif "audio" in data:
        audio_values = data["audio"] if isinstance(data["audio"], list) else [data["audio"]]
        labels = ([f"{where}.audio[{j}]" for j in range(len(audio_values))] if isinstance(data["audio"], list)
                  else [f"{where}.audio"])
    else:
        raise InputError(f"{where}: no audio; expected 'audio_list' (one path per person, left to right) "
                         "or 'cond_audio' {'person1': ..., 'person2': ...}")
    if not audio_values:
        raise InputError(f"{where}: the audio list is empty; expected one audio file per person")
    labels = [f"{label} (person {i + 1})" if len(labels) > 1 else label for i, label in enumerate(labels)]
    audio = [_as_path(v, base, label) for v, label in zip(audio_values, labels)]

    # the reference prefers enhance_caption over caption when both are set
    prompt = data.get("enhance_caption") or data.get("caption") or data.get("prompt") or ""
    if not isinstance(prompt, str):
        raise InputError(f"{where}: the prompt must be a string, got {type(prompt).__name__}")
    mode = data.get("audio_type", data.get("mode"))
    if mode is not None and mode not in ("pad", "concat", "add", "para"):
        raise InputError(f"{where}.audio_type: expected 'pad' or 'concat', got {mode!r}")
    mode = {"add": "concat", "para": "pad"}.get(mode, mode)  # MultiTalk's names for the same two modes
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InputError(f"{where}.seed: expected an integer, got {seed!r}")
    boxes = data.get("boxes")
    if boxes is not None:
        if not (isinstance(boxes, list) and all(isinstance(b, list) and len(b) == 4 for b in boxes)):
            raise InputError(f"{where}.boxes: expected [[x1, y1, x2, y2], ...] (one per person)")
    known = {"image_path", "cond_image", "image", "audio_list", "cond_audio", "audio_left", "audio_right", "audio",
             "enhance_caption", "caption", "prompt", "audio_type", "mode", "seed", "boxes", "negative_prompt"}
    ignored = sorted(k for k in data if k not in known)
    if ignored:
        log.warning("%s: ignoring unknown key(s) %s", where, ", ".join(ignored))
    return BatchTask(
        name=name, image=image, audio=audio, prompt=prompt, audio_mode=mode,
        negative_prompt=data.get("negative_prompt"), seed=seed, boxes=boxes,
        image_label=f"{where}.{image_key}", audio_labels=labels,
    )


def load_batch_file(path: str | Path, strict: bool = True) -> list[BatchTask]:
    """Read a batch JSON. Two styles are accepted (relative paths: beside the JSON, else in the current folder):

    * the reference's ``input_example/customize_your_input_here.json``: an object
      ``{"name": {"image_path": ..., "caption": ..., "enhance_caption": ..., "audio_list": [left, right]}}``
      (``audio_left``/``audio_right`` also accepted; ``enhance_caption`` wins over ``caption``);
    * MultiTalk-style tasks: ``{"prompt": ..., "cond_image": ..., "cond_audio": {"person1": ..., "person2": ...},
      "audio_type": "pad"|"concat"}``, one such object or a list of them (named ``task_000``, ...
      unless they carry a ``"name"``).

    Optional per task: ``audio_type``/``mode``, ``negative_prompt``, ``seed``, ``boxes``.

    A problem with the file as a whole raises :class:`InputError`; a problem with one entry raises too
    when ``strict``, otherwise that entry comes back with ``problem`` set (the CLI runs the others).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--batch '{path}': no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"--batch '{path}': not valid JSON ({exc})") from None
    base = path.resolve().parent
    tasks: list[BatchTask] = []
    if isinstance(data, dict) and any(k in data for k in ("cond_image", "image_path", "cond_audio")):
        data = [data]

    def parse(name: str, item, where: str) -> BatchTask:
        try:
            return _parse_task(name, item, base, where)
        except InputError as exc:
            if strict:
                raise
            return BatchTask(name=name, image=None, audio=[], prompt="", problem=str(exc))

    if isinstance(data, dict):
        for name, item in data.items():
            tasks.append(parse(str(name), item, f"{path.name}['{name}']"))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            name = item.get("name", f"task_{i:03d}") if isinstance(item, dict) else f"task_{i:03d}"
            tasks.append(parse(str(name), item, f"{path.name}[{i}]"))
    else:
        raise InputError(f"--batch '{path}': expected an object of named tasks or a list of tasks")
    if not tasks:
        raise InputError(f"--batch '{path}': contains no tasks")
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"--batch '{path}': task names must be unique (they name the mp4 files); repeated: {dupes}")
    for t in tasks:
        if "/" in t.name or "\\" in t.name or t.name in ("", ".", ".."):
            raise InputError(f"--batch '{path}': task name {t.name!r} cannot be used as a file name")
    return tasks
