"""``anytalker generate``: one image + one audio file per person + a prompt -> an mp4 at 24 fps.

Three ways to run it:

* single clip: ``anytalker generate --image two.png --audio left.wav --audio right.wav --prompt "..." --out out.mp4``
* batch: ``anytalker generate --batch tasks.json --out results/`` (the reference's input JSON, see
  :func:`load_batch_file`), the models are loaded once;
* demo: ``anytalker generate --demo --out demo.mp4`` runs every stage with tiny random-weight models on
  a real photo and real (espeak-ng) speech. The output is noise: it proves the plumbing, not the model.

``--preview-faces faces.png`` only detects the faces, writes the numbered-box preview and exits.

Only argparse and the standard library are imported at module level (``anytalker --help`` imports
this module); torch and the pipeline are imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from ..constants import MAX_AREA
from ..errors import InputError
from .split_voices import add_conversation_arguments, check_conversation_args, person_tracks

from .long_clip import (add_long_clip_arguments, check_long_clip_args, long_clip_options, remove_work_folder,
                        work_dir_for)

log = logging.getLogger(__name__)

DEFAULT_MAX_AREA = MAX_AREA
DEMO_MAX_AREA = 128 * 256  # --demo defaults: small enough for a CPU in about a minute
DEMO_FRAMES = 33


@dataclass
class BatchTask:
    """One clip of a batch file. Paths are absolute (resolved against the JSON's folder)."""

    name: str
    image: Path
    audio: list[Path]
    prompt: str
    audio_mode: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    boxes: list[list[float]] | None = None


# --------------------------------------------------------------------------------------------- args


def _parse_area(text: str) -> int:
    """``399360``, ``832*480`` or ``832x480`` -> pixel count."""
    cleaned = text.lower().replace("x", "*").replace(" ", "")
    try:
        parts = [int(p) for p in cleaned.split("*")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-area: expected a pixel count or WxH like 832*480, got {text!r}")
    area = 1
    for p in parts:
        area *= p
    if len(parts) > 2 or area < 32 * 32:
        raise argparse.ArgumentTypeError(f"--max-area: expected at least 32*32 pixels as N or WxH, got {text!r}")
    return area


def parse_boxes(text: str) -> list[list[float]]:
    """``"x1,y1,x2,y2;x1,y1,x2,y2"`` (pixels of the input image, one box per person) -> list of boxes."""
    boxes = []
    for chunk in text.replace(" ", "").split(";"):
        if not chunk:
            continue
        try:
            vals = [float(v) for v in chunk.split(",")]
        except ValueError:
            raise InputError(f"--boxes: '{chunk}' is not four numbers x1,y1,x2,y2") from None
        if len(vals) != 4:
            raise InputError(f"--boxes: '{chunk}' has {len(vals)} numbers, expected x1,y1,x2,y2")
        if vals[2] <= vals[0] or vals[3] <= vals[1]:
            raise InputError(f"--boxes: '{chunk}' is empty; expected x2 > x1 and y2 > y1")
        boxes.append(vals)
    if not boxes:
        raise InputError("--boxes: no box given; expected 'x1,y1,x2,y2;x1,y1,x2,y2' (one per person)")
    return boxes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--image", type=Path, help="the first frame: a photo with one face per audio track")
    inputs.add_argument("--audio", type=Path, action="append", default=[], metavar="AUDIO",
                        help="one audio file per person, given left to right (repeat: --audio A.wav --audio B.wav)")
    add_conversation_arguments(inputs)
    inputs.add_argument("--prompt", default="", help="text prompt describing the scene")
    inputs.add_argument("--negative-prompt", default=None,
                        help="negative prompt (default: the reference's talking-head negative prompt)")
    inputs.add_argument("--audio-mode", choices=("pad", "concat"), default="pad",
                        help="pad: all tracks play at once on one timeline (length = longest); "
                             "concat: people speak in turns, left to right (length = sum)")
    inputs.add_argument("--boxes", type=str, default=None, metavar="X1,Y1,X2,Y2;...",
                        help="face boxes in image pixels, left to right, instead of detection")
    inputs.add_argument("--face-backend", choices=("auto", "insightface", "mediapipe"), default="auto",
                        help="face detector (auto: insightface if its models are installed, else mediapipe)")
    inputs.add_argument("--batch", type=Path, default=None, metavar="FILE.json",
                        help="generate every task of a JSON file (the reference's input_example format); "
                             "--out is then a folder")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None,
                     help="output mp4 (default out.mp4; demo.mp4 with --demo; a folder with --batch)")
    out.add_argument("--overwrite", action="store_true", help="batch: regenerate clips whose mp4 already exists")
    out.add_argument("--preview-faces", type=Path, default=None, metavar="OUT.png",
                     help="write the image with the numbered face boxes and exit (no models needed)")
    out.add_argument("--demo", action="store_true",
                     help="run every stage with tiny random-weight models on a sample photo and espeak-ng "
                          "speech (no downloads; the output is noise)")

    models = parser.add_argument_group("models (ComfyUI models/ layout, or explicit files)")
    models.add_argument("--models-dir", type=Path, default=None,
                        help="ComfyUI-style models folder with diffusion_models/, text_encoders/, clip_vision/, "
                             "vae/, audio_encoders/, insightface/ (default $ANYTALKER_MODELS_DIR or ./models)")
    models.add_argument("--dit", type=Path, default=None, help="AnyTalker DiT (.safetensors or released .pth)")
    models.add_argument("--dit-config", type=Path, default=None, help="DiT config JSON (default: inferred)")
    models.add_argument("--text-encoder", type=Path, default=None, help="UMT5-XXL encoder (umt5_xxl_*.safetensors)")
    models.add_argument("--clip-vision", type=Path, default=None, help="CLIP ViT-H/14 (clip_vision_h.safetensors)")
    models.add_argument("--vae", type=Path, default=None, help="Wan2.1 VAE (wan_2.1_vae.safetensors)")
    models.add_argument("--wav2vec", type=Path, default=None, help="wav2vec2-base-960h folder or file")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, default=None, help="denoising steps (default 40; 4 with --demo)")
    sampling.add_argument("--shift", type=float, default=None,
                          help="flow shift (default 3.0 up to 832*480 pixels, else 5.0)")
    sampling.add_argument("--sampler", choices=("unipc", "dpm++", "euler"), default="unipc",
                          help="solver (unipc: the reference default; dpm++; euler: plain flow Euler)")
    sampling.add_argument("--guidance", type=float, default=4.5,
                          help="one CFG scale for text and audio together (uncond = negative prompt + silence)")
    sampling.add_argument("--text-guidance", type=float, default=None,
                          help="separate text scale (use with --audio-guidance; three model passes per step)")
    sampling.add_argument("--audio-guidance", type=float, default=None, help="separate audio scale")
    sampling.add_argument("--seed", type=int, default=42, help="noise seed; -1 picks a random one (logged)")
    sampling.add_argument("--max-area", type=_parse_area, default=None,
                          help="max output pixels, as N or WxH (default 832*480; 128*256 with --demo); keeps the "
                               "image's aspect, sides snapped to multiples of 32")
    sampling.add_argument("--frame-num", type=int, default=None,
                          help="number of frames, 4n+1, at most the audio's length (default: the audio's "
                               "length; 33 with --demo)")
    sampling.add_argument("--fps", type=int, default=24, help="output frame rate (the model was trained at 24)")
    add_long_clip_arguments(parser)

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, mps ...")
    runtime.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                         help="DiT dtype (auto: bfloat16 where the hardware has bf16 matrix units -- a bf16 GPU, "
                              "a CPU with AVX512-BF16/AMX -- float16 on other GPUs, else float32)")
    runtime.add_argument("--block-storage", choices=("same", "fp8"), default="same",
                         help="fp8: store the DiT's transformer-block weights in 8 bits, computed in --dtype "
                              "(about half the memory: the 14B release needs ~20 GiB instead of 39)")
    runtime.add_argument("--offload", action="store_true",
                         help="keep models on the CPU and move each to the device only while it runs")
    speed = parser.add_argument_group("speed (exact savings; see BENCHMARKS.md)")
    speed.add_argument("--no-kv-cache", action="store_true",
                       help="do not keep every block's text/image/face/audio keys and values for the whole run "
                            "(saves ~1 GiB per speaker at the 1.3B size, 81 frames, fp32; each step recomputes them)")
    speed.add_argument("--cfg-batch", choices=("auto", "on", "off"), default="auto",
                       help="run the guidance branches (cond/uncond) as one batched forward: auto = when the "
                            "extra activations fit the free memory")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the transformer blocks (the first step compiles: minutes on a CPU)")


# ---------------------------------------------------------------------------------------- batch file


def _as_path(value, base: Path, what: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what}: expected a file path string, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _parse_task(name: str, data: dict, base: Path, where: str) -> BatchTask:
    """One task in either accepted style (see :func:`load_batch_file`)."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object with the image, audio and prompt, got {type(data).__name__}")
    image_value = data.get("image_path", data.get("cond_image", data.get("image")))
    if image_value is None:
        raise InputError(f"{where}: no image; expected 'image_path' (or 'cond_image')")
    image = _as_path(image_value, base, f"{where}.image_path")

    if "audio_list" in data:
        audio_values = data["audio_list"]
        if not isinstance(audio_values, list):
            raise InputError(f"{where}.audio_list: expected a list of audio paths, left to right")
    elif "cond_audio" in data:
        cond = data["cond_audio"]
        if not isinstance(cond, dict):
            raise InputError(f"{where}.cond_audio: expected {{'person1': path, 'person2': path, ...}}")

        def person_index(key: str) -> int:
            digits = "".join(ch for ch in key if ch.isdigit())
            if not digits:
                raise InputError(f"{where}.cond_audio: key '{key}' should be person1, person2, ... (left to right)")
            return int(digits)

        audio_values = [cond[k] for k in sorted(cond, key=person_index)]
    elif "audio_left" in data or "audio_right" in data:
        audio_values = [data[k] for k in ("audio_left", "audio_right") if data.get(k)]
    elif "audio" in data:
        audio_values = data["audio"] if isinstance(data["audio"], list) else [data["audio"]]
    else:
        raise InputError(f"{where}: no audio; expected 'audio_list' (one path per person, left to right) "
                         "or 'cond_audio' {'person1': ..., 'person2': ...}")
    if not audio_values:
        raise InputError(f"{where}: the audio list is empty; expected one audio file per person")
    audio = [_as_path(v, base, f"{where}.audio[{i}]") for i, v in enumerate(audio_values)]

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
    )


def load_batch_file(path: str | Path) -> list[BatchTask]:
    """Read a batch JSON. Two styles are accepted (relative paths are relative to the JSON's folder):

    * the reference's ``input_example/customize_your_input_here.json``: an object
      ``{"name": {"image_path": ..., "caption": ..., "enhance_caption": ..., "audio_list": [left, right]}}``
      (``audio_left``/``audio_right`` also accepted; ``enhance_caption`` wins over ``caption``);
    * MultiTalk-style tasks: ``{"prompt": ..., "cond_image": ..., "cond_audio": {"person1": ..., "person2": ...},
      "audio_type": "pad"|"concat"}``, one such object or a list of them (named ``task_000``, ...
      unless they carry a ``"name"``).

    Optional per task: ``audio_type``/``mode``, ``negative_prompt``, ``seed``, ``boxes``.
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
    if isinstance(data, dict):
        for name, item in data.items():
            tasks.append(_parse_task(str(name), item, base, f"{path.name}['{name}']"))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            name = item.get("name", f"task_{i:03d}") if isinstance(item, dict) else f"task_{i:03d}"
            tasks.append(_parse_task(str(name), item, base, f"{path.name}[{i}]"))
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


# ------------------------------------------------------------------------------------------------ run


def _check_args(args: argparse.Namespace) -> None:
    if args.demo and args.batch:
        raise InputError("--demo and --batch cannot be combined")
    if not args.demo and not args.batch and args.image is None:
        raise InputError("--image is required (or use --batch FILE.json, or --demo)")
    check_conversation_args(args)
    if args.batch and (args.image is not None or args.audio):
        raise InputError("--batch takes its images and audio from the JSON; drop --image/--audio")
    if (args.text_guidance is None) != (args.audio_guidance is None):
        raise InputError("--text-guidance and --audio-guidance go together; give both or neither (then --guidance)")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}")
    if args.frame_num is not None and (args.frame_num < 1 or (args.frame_num - 1) % 4):
        raise InputError(f"--frame-num must be 4n+1 (5, 9, 13, ..., 81), got {args.frame_num}")
    if args.fps < 1:
        raise InputError(f"--fps must be positive, got {args.fps}")
    check_long_clip_args(args)
    if args.out is not None and args.out.suffix.lower() != ".mp4" and not args.batch:
        raise InputError(f"--out '{args.out}': expected an .mp4 file name")


def _resolve_device(name: str):
    import torch

    if name != "auto":
        try:
            return torch.device(name)
        except RuntimeError:
            raise InputError(f"--device: unknown torch device {name!r} (try cpu, cuda, cuda:0, mps)") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _apply_speed(pipe, args: argparse.Namespace) -> None:
    from ..generation.guided import SpeedOptions

    pipe.speed = SpeedOptions(kv_cache=not args.no_kv_cache,
                              cfg_batch={"auto": "auto", "on": True, "off": False}[args.cfg_batch])
    if args.compile:
        pipe.dit.compile_blocks()


def _block_storage(args: argparse.Namespace):
    import torch

    return torch.float8_e4m3fn if args.block_storage == "fp8" else None


def _resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        from ..model.precision import auto_dtype

        return auto_dtype(device)
    return getattr(torch, name)


def _build_request(args: argparse.Namespace, image, audio: list, prompt: str, mode: str,
                   negative_prompt: str | None, seed: int, boxes):
    from ..generation.pipeline import GenerationRequest

    return GenerationRequest(
        image=image,
        audio=audio,
        prompt=prompt,
        negative_prompt=negative_prompt,
        audio_mode=mode,
        steps=args.steps if args.steps is not None else (4 if args.demo else 40),
        shift=args.shift,
        sampler=args.sampler,
        guidance=args.guidance,
        text_guidance=args.text_guidance,
        audio_guidance=args.audio_guidance,
        seed=seed,
        max_area=args.max_area if args.max_area is not None else DEFAULT_MAX_AREA,
        frame_num=args.frame_num,
        fps=args.fps,
        boxes=boxes,
        window_frames=args.window_frames,
        long_clip=long_clip_options(args),
    )


def _seed(value: int) -> int:
    if value is None or value < 0:
        value = random.randint(0, 2**31 - 1)
        log.info("random seed: %d", value)
    return value


def _preview_only(args: argparse.Namespace) -> int:
    """Detect faces and write the numbered-box preview; no generation models are loaded."""
    from ..generation.pipeline import detect_faces_for_preview, load_image

    image = load_image(args.image)
    n = len(args.audio) if args.audio else args.speakers
    boxes = parse_boxes(args.boxes) if args.boxes else None
    models_dir = args.models_dir
    preview, found = detect_faces_for_preview(image, n, boxes=boxes, backend=args.face_backend,
                                              models_dir=models_dir)
    _write_png(args.preview_faces, preview)
    print(f"{len(found)} face(s), left to right: " + "; ".join(
        f"#{i + 1} [{', '.join(f'{v:.0f}' for v in box)}]" for i, box in enumerate(found)))
    print(f"wrote {args.preview_faces}")
    return 0


def _write_png(path: Path, image) -> None:
    from PIL import Image

    from ..io.atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:
        from ..errors import Interrupted

        raise Interrupted("stopped by Ctrl-C; the clip being generated was not written") from None


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.preview_faces is not None and not args.demo:
        if args.batch:
            raise InputError("--preview-faces works on one --image, not with --batch")
        return _preview_only(args)

    from ..io.media import load_audio
    from ..io.model_paths import resolve_model_paths
    from ..generation.pipeline import AnyTalkerPipeline, load_image

    device = _resolve_device(args.device)
    dtype = _resolve_dtype(args.dtype, device)

    if args.demo:
        from ..testing.demo import DEMO_BANNER, build_demo_models, demo_inputs

        import tempfile

        log.warning(DEMO_BANNER)
        with tempfile.TemporaryDirectory(prefix="anytalker-demo-") as tmp:
            paths = build_demo_models(Path(tmp) / "models")
            inputs = demo_inputs(Path(tmp) / "inputs", num_people=len(args.audio) or 2)
            pipe = AnyTalkerPipeline.from_paths(paths, device=device, dtype=dtype, offload=args.offload,
                                                face_backend="mediapipe" if args.face_backend == "auto"
                                                else args.face_backend,
                                                block_weight_dtype=_block_storage(args))
            _apply_speed(pipe, args)
            audio = person_tracks(args, args.audio or inputs.audio)
            image = load_image(args.image) if args.image is not None else inputs.image
            if args.max_area is None:
                args.max_area = DEMO_MAX_AREA
            if args.frame_num is None and not args.audio:  # the demo sentences all last longer than this
                args.frame_num = DEMO_FRAMES
            request = _build_request(args, image, audio, args.prompt or inputs.prompt, args.audio_mode,
                                     args.negative_prompt, _seed(args.seed),
                                     parse_boxes(args.boxes) if args.boxes else None)
            out = args.out or Path("demo.mp4")
            result = generate_to_file(pipe, request, out, progress=_log_progress, work_dir=args.work_dir)
            if args.preview_faces is not None:
                _write_png(args.preview_faces, result.preview)
        log.warning(DEMO_BANNER)
        print(f"wrote {out} ({result.num_frames} frames, {result.fps} fps) [demo: random weights, noise]")
        return 0

    overrides = {"dit": args.dit, "text_encoder": args.text_encoder, "clip_vision": args.clip_vision,
                 "vae": args.vae, "wav2vec": args.wav2vec}
    # validate the cheap inputs before loading gigabytes of weights
    if args.batch:
        tasks = load_batch_file(args.batch)
    else:
        tasks = [BatchTask(name=(args.out or Path("out.mp4")).stem, image=args.image, audio=list(args.audio),
                           prompt=args.prompt, boxes=parse_boxes(args.boxes) if args.boxes else None)]
    out_dir = None
    if args.batch:
        out_dir = args.out or args.batch.resolve().parent / args.batch.stem
        done_already = [t for t in tasks if (out_dir / f"{t.name}.mp4").exists() and not args.overwrite]
        for t in done_already:
            log.info("%s: %s exists, skipped (--overwrite to redo)", t.name, out_dir / f"{t.name}.mp4")
        tasks = [t for t in tasks if t not in done_already]
        skipped = len(done_already)
        if not tasks:
            print(f"batch: 0 generated, {skipped} skipped, 0 failed (every mp4 exists; --overwrite to redo)")
            return 0
    missing_inputs = [f"{t.name}: {p}" for t in tasks for p in [t.image, *t.audio] if not Path(p).is_file()]
    if missing_inputs and not args.batch:
        raise InputError("input file(s) not found:\n  " + "\n  ".join(missing_inputs))
    if missing_inputs:  # batch: those tasks fail with this message, the others run
        log.warning("batch: input file(s) not found:\n  %s", "\n  ".join(missing_inputs))
    paths = resolve_model_paths(args.models_dir, overrides, dit_config=args.dit_config)
    pipe = AnyTalkerPipeline.from_paths(paths, device=device, dtype=dtype, offload=args.offload,
                                        face_backend=args.face_backend, block_weight_dtype=_block_storage(args))
    _apply_speed(pipe, args)

    if not args.batch:
        task = tasks[0]
        out = args.out or Path("out.mp4")
        request = _build_request(args, load_image(task.image), person_tracks(args, task.audio), task.prompt,
                                 args.audio_mode, args.negative_prompt, _seed(args.seed), task.boxes)
        result = generate_to_file(pipe, request, out, progress=_log_progress, work_dir=args.work_dir)
        print(f"wrote {out} ({result.num_frames} frames, {result.fps} fps)")
        return 0

    out_dir.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    done = 0
    for i, task in enumerate(tasks):
        out = out_dir / f"{task.name}.mp4"
        log.info("[%d/%d] %s: %d person(s), %s", i + 1, len(tasks), task.name, len(task.audio), task.image)
        try:
            request = _build_request(
                args, load_image(task.image), [load_audio(p) for p in task.audio], task.prompt,
                task.audio_mode or args.audio_mode, task.negative_prompt or args.negative_prompt,
                _seed(task.seed if task.seed is not None else args.seed), task.boxes)
            generate_to_file(pipe, request, out, progress=_log_progress, work_dir=args.work_dir)
        except InputError as exc:  # one bad task (missing file, wrong face count...) must not stop the batch
            log.error("%s: %s", task.name, exc)
            failed.append(task.name)
            continue
        done += 1
        print(f"wrote {out}")
    print(f"batch: {done} generated, {skipped} skipped, {len(failed)} failed" +
          (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


def generate_to_file(pipe, request, out: str | Path, progress=None, should_stop=None, work_dir=None):
    """Generate one clip and write it as an mp4 (24 fps video + the mixed audio), atomically: frames are
    streamed to the encoder as they are final; nothing is written on failure or interruption. A long clip
    keeps its finished windows in ``work_dir`` (default ``.NAME.windows`` next to ``out``) so that the same
    command resumes after a kill; removed once the clip is written. Returns the ``GenerationResult``."""
    from ..io.media import VideoWriter

    with VideoWriter(out, request.fps) as writer:
        result = pipe.generate(request, progress=progress, should_stop=should_stop, frame_sink=writer.write,
                               work_dir=work_dir_for(out, work_dir))
        writer.finish(result.audio, result.sample_rate)
    remove_work_folder(result)
    return result


def _log_progress(step: int, total: int) -> None:
    log.info("denoising step %d/%d", step, total)
