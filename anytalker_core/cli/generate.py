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
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import MAX_AREA
from ..errors import InputError
from .batch_file import BatchTask, load_batch_file
from .long_clip import add_long_clip_arguments, long_clip_options, remove_work_folder, work_dir_for
from .validate import parse_boxes
from .split_voices import add_conversation_arguments, person_tracks

__all__ = ["BatchTask", "add_arguments", "generate_to_file", "load_batch_file", "parse_boxes", "run"]

log = logging.getLogger(__name__)

DEFAULT_MAX_AREA = MAX_AREA
DEMO_MAX_AREA = 128 * 256  # --demo defaults: small enough for a CPU in about a minute
DEMO_FRAMES = 33


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


# ------------------------------------------------------------------------------------------------ run


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


def _build_request(args: argparse.Namespace, clip, seed: int):
    from ..generation.pipeline import GenerationRequest

    return GenerationRequest(
        image=clip.image,
        audio=clip.audio,
        prompt=clip.prompt,
        negative_prompt=clip.negative_prompt,
        audio_mode=clip.audio_mode,
        steps=args.steps if args.steps is not None else (4 if args.demo else 40),
        shift=args.shift,
        sampler=args.sampler,
        guidance=args.guidance,
        text_guidance=args.text_guidance,
        audio_guidance=args.audio_guidance,
        seed=seed,
        max_area=_max_area(args),
        frame_num=clip.frame_num,
        fps=args.fps,
        boxes=clip.boxes,
        window_frames=args.window_frames,
        long_clip=long_clip_options(args),
    )


def _max_area(args: argparse.Namespace) -> int:
    if args.max_area is not None:
        return args.max_area
    return DEMO_MAX_AREA if args.demo else DEFAULT_MAX_AREA


def _seed(value: int) -> int:
    if value is None or value < 0:
        value = random.randint(0, 2**31 - 1)
        log.info("random seed: %d", value)
    return value


def _audio_labels(task: BatchTask) -> list[str]:
    return task.audio_labels or [f"--audio #{i + 1}" for i in range(len(task.audio))]


def _conversation_tracks(args: argparse.Namespace, task: BatchTask) -> None:
    """``--conversation MIX``: the recording split into one track per person becomes the task's audio."""
    if args.conversation is None:
        return
    task.audio = person_tracks(args, [])
    task.audio_labels = [f"--conversation speaker {i + 1}" for i in range(len(task.audio))]


def _check_files_exist(args: argparse.Namespace, task: BatchTask) -> None:
    import torch  # --conversation's split tracks arrive as waveforms, not files

    if task.problem:
        raise InputError(task.problem)
    labels = _audio_labels(task)
    missing = [f"{label} '{path}'" for label, path in zip([task.image_label, *labels], [task.image, *task.audio])
               if not isinstance(path, torch.Tensor) and (not isinstance(path, Path) or not path.is_file())]
    if missing:
        where = " (relative paths are looked up beside the batch file, then in the current folder)" \
            if args.batch else ""
        raise InputError("input file(s) not found: " + "; ".join(missing) + where)


def _check_task(args: argparse.Namespace, task: BatchTask, out: Path, detector, frame_num: int | None = None):
    """One task's inputs decoded and checked (:func:`.validate.check_clip`), labelled as the user wrote them."""
    from .validate import check_clip

    _check_files_exist(args, task)
    labels = _audio_labels(task)
    return check_clip(
        name=task.name, image=task.image, audio=task.audio, prompt=task.prompt,
        audio_mode=task.audio_mode or args.audio_mode, negative_prompt=task.negative_prompt or args.negative_prompt,
        seed=task.seed, boxes=task.boxes, out=out, frame_num=frame_num if frame_num is not None else args.frame_num,
        fps=args.fps, max_area=_max_area(args), detector=detector, image_label=task.image_label,
        audio_labels=labels, boxes_label=f"{task.image_label.rsplit('.', 1)[0]}.boxes" if args.batch else "--boxes")


def _preview_only(args: argparse.Namespace) -> int:
    """Detect faces and write the numbered-box preview; no generation models are loaded."""
    from ..generation.pipeline import detect_faces_for_preview
    from ..io.images import load_image

    image = load_image(args.image, f"--image '{args.image}'")
    n = len(args.audio) if args.audio else args.speakers
    boxes = parse_boxes(args.boxes) if args.boxes else None
    preview, found = detect_faces_for_preview(image, n, boxes=boxes, backend=args.face_backend,
                                              models_dir=args.models_dir)
    _write_png(args.preview_faces, preview)
    print(f"{len(found)} face(s), left to right: " + "; ".join(
        f"#{i + 1} [{', '.join(f'{v:.0f}' for v in box)}]" for i, box in enumerate(found)))
    print(f"wrote {args.preview_faces}")
    return 0


def _write_png(path: Path, image) -> None:
    from PIL import Image

    from ..io.atomic import atomic_path

    with atomic_path(path, suffix=".tmp.png") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def run(args: argparse.Namespace) -> int:
    """``anytalker generate``: checks (no model loaded), then the models, then the clip(s)."""
    from .validate import check_device, check_flags

    check_flags(args)
    if args.preview_faces is not None and not args.demo:
        return _preview_only(args)
    device = check_device(args.device)
    dtype = _resolve_dtype(args.dtype, device)
    if args.demo:
        return _run_demo(args, device, dtype)
    if args.batch:
        return _run_batch(args, device, dtype)

    from ..generation.pipeline import AnyTalkerPipeline
    from ..io.model_paths import resolve_model_paths

    out = args.out or Path("out.mp4")
    task = BatchTask(name=out.stem, image=args.image, audio=list(args.audio), prompt=args.prompt,
                     boxes=parse_boxes(args.boxes) if args.boxes else None)
    _conversation_tracks(args, task)
    _check_files_exist(args, task)  # the user's own files first, then the model files
    paths = resolve_model_paths(args.models_dir, _overrides(args), dit_config=args.dit_config)
    detector = _detector(args, paths, device, [task])
    clip = _check_task(args, task, out, detector)  # everything checked: now the gigabytes
    pipe = AnyTalkerPipeline.from_paths(paths, device=device, dtype=dtype, offload=args.offload,
                                        face_backend=args.face_backend, block_weight_dtype=_block_storage(args),
                                        face_detector=detector)
    _apply_speed(pipe, args)
    result = generate_to_file(pipe, _build_request(args, clip, _seed(args.seed)), out,
                              progress=_log_progress, work_dir=args.work_dir)
    print(f"wrote {out} ({result.num_frames} frames, {result.fps} fps)")
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    return {"dit": args.dit, "text_encoder": args.text_encoder, "clip_vision": args.clip_vision,
            "vae": args.vae, "wav2vec": args.wav2vec}


def _detector(args: argparse.Namespace, paths, device, tasks: list[BatchTask]):
    """The face detector, loaded once (before the generation models) when some task has no boxes."""
    if all(t.boxes is not None or t.problem for t in tasks):
        return None
    from ..generation.pipeline import make_face_detector

    return make_face_detector(args.face_backend, paths.insightface_root, device)


def _run_demo(args: argparse.Namespace, device, dtype) -> int:
    import tempfile

    from ..generation.pipeline import AnyTalkerPipeline
    from ..testing.demo import DEMO_BANNER, build_demo_models, demo_inputs

    log.warning(DEMO_BANNER)
    out = args.out or Path("demo.mp4")
    with tempfile.TemporaryDirectory(prefix="anytalker-demo-") as tmp:  # removed on any exit, signals included
        inputs = demo_inputs(Path(tmp) / "inputs", num_people=len(args.audio) or 2)
        task = BatchTask(name=out.stem, image=args.image, audio=list(args.audio or inputs.audio),
                         prompt=args.prompt or inputs.prompt, boxes=parse_boxes(args.boxes) if args.boxes else None)
        if args.image is None:
            task.image_label = "the demo image"
            task.image = Path(tmp) / "inputs" / "demo.png"
            _write_png(task.image, inputs.image)
        if not args.audio:
            task.audio_labels = [f"demo speech #{i + 1}" for i in range(len(task.audio))]
        _conversation_tracks(args, task)
        paths = build_demo_models(Path(tmp) / "models")
        backend = "mediapipe" if args.face_backend == "auto" else args.face_backend
        args.face_backend = backend
        detector = _detector(args, paths, device, [task])
        # the demo sentences all last longer than DEMO_FRAMES
        frame_num = args.frame_num if args.frame_num is not None or args.audio else DEMO_FRAMES
        clip = _check_task(args, task, out, detector, frame_num=frame_num)
        pipe = AnyTalkerPipeline.from_paths(paths, device=device, dtype=dtype, offload=args.offload,
                                            face_backend=backend, block_weight_dtype=_block_storage(args),
                                            face_detector=detector)
        _apply_speed(pipe, args)
        result = generate_to_file(pipe, _build_request(args, clip, _seed(args.seed)), out,
                                  progress=_log_progress, work_dir=args.work_dir)
        if args.preview_faces is not None:
            _write_png(args.preview_faces, result.preview)
    log.warning(DEMO_BANNER)
    print(f"wrote {out} ({result.num_frames} frames, {result.fps} fps) [demo: random weights, noise]")
    return 0


def _run_batch(args: argparse.Namespace, device, dtype) -> int:
    """Every entry is checked before the models load; a failing entry (bad input, or any error while it
    is generated) is reported and the batch goes on; the summary is printed whatever happens."""
    from ..input_names import BATCH_NAMES, input_names

    with input_names(BATCH_NAMES):
        return _batch(args, device, dtype)


def _batch(args: argparse.Namespace, device, dtype) -> int:
    from ..errors import AnyTalkerError
    from ..generation.pipeline import AnyTalkerPipeline
    from ..io.model_paths import resolve_model_paths
    from .guard import describe_unexpected

    tasks = load_batch_file(args.batch, strict=False)
    out_dir = args.out or args.batch.resolve().parent / args.batch.stem
    summary = _BatchSummary(total=len(tasks))
    todo = []
    for t in tasks:
        if (out_dir / f"{t.name}.mp4").exists() and not args.overwrite:
            log.info("%s: %s exists, skipped (--overwrite to redo)", t.name, out_dir / f"{t.name}.mp4")
            summary.skipped += 1
        else:
            todo.append(t)
    if not todo:
        summary.print(note="every mp4 exists; --overwrite to redo")
        return 0
    try:
        paths = resolve_model_paths(args.models_dir, _overrides(args), dit_config=args.dit_config)
        detector = _detector(args, paths, device, todo)
        clips = []
        for t in todo:
            try:
                clips.append(_check_task(args, t, out_dir / f"{t.name}.mp4", detector))
            except AnyTalkerError as exc:
                summary.fail(t.name, str(exc), exc.exit_code)
        if not clips:
            return summary.print()
        out_dir.mkdir(parents=True, exist_ok=True)
        pipe = AnyTalkerPipeline.from_paths(paths, device=device, dtype=dtype, offload=args.offload,
                                            face_backend=args.face_backend, block_weight_dtype=_block_storage(args),
                                            face_detector=detector)
        _apply_speed(pipe, args)
        for i, clip in enumerate(clips):
            log.info("[%d/%d] %s: %d person(s)", i + 1, len(clips), clip.name, len(clip.audio))
            try:
                seed = _seed(clip.seed if clip.seed is not None else args.seed)
                generate_to_file(pipe, _build_request(args, clip, seed), clip.out, progress=_log_progress,
                                 work_dir=args.work_dir)
            except AnyTalkerError as exc:
                if exc.exit_code == 130:
                    raise
                summary.fail(clip.name, str(exc), exc.exit_code)
                continue
            except Exception as exc:  # out of memory, a failing disk, a bug: the next entry still runs
                message, code = describe_unexpected(exc)
                log.debug("%s: traceback", clip.name, exc_info=exc)
                summary.fail(clip.name, message, code)
                continue
            summary.done += 1
            print(f"wrote {clip.out}")
    except BaseException as exc:  # stopped (Ctrl-C, SIGTERM) or a fatal error: still say what was done
        from ..errors import Interrupted

        summary.print(note="interrupted" if isinstance(exc, (KeyboardInterrupt, Interrupted))
                      else f"stopped by {type(exc).__name__}")
        raise
    return summary.print()


@dataclass
class _BatchSummary:
    total: int
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    code: int = 0

    def fail(self, name: str, message: str, code: int) -> None:
        log.error("%s: %s", name, message)
        self.failed.append(name)
        # 1 (a run failed) outranks 2 (bad input)
        self.code = 1 if 1 in (code, self.code) else max(self.code, code)

    def print(self, note: str = "") -> int:
        """``batch: D generated, S skipped, F failed (names)`` on stdout; returns the exit code."""
        line = f"batch: {self.done} generated, {self.skipped} skipped, {len(self.failed)} failed"
        if self.failed:
            line += f" ({', '.join(self.failed)})"
        if note:
            line += f" [{note}]"
        print(line, flush=True)
        return self.code


def generate_to_file(pipe, request, out: str | Path, progress=None, should_stop=None, work_dir=None):
    """Generate one clip and write it as an mp4 (24 fps video + the mixed audio), atomically: frames are
    streamed to the encoder as they are final; nothing is written on failure or interruption. A long clip
    keeps its finished windows in ``work_dir`` (default ``.NAME.windows`` next to ``out``) so that the same
    command resumes after a kill; removed once the clip is written. Returns the ``GenerationResult``."""
    from ..io.media import VideoWriter

    log.info("writing %s", out)
    with VideoWriter(out, request.fps) as writer:
        result = pipe.generate(request, progress=progress, should_stop=should_stop, frame_sink=writer.write,
                               work_dir=work_dir_for(out, work_dir))
        writer.finish(result.audio, result.sample_rate)
    remove_work_folder(result)
    return result


def _log_progress(step: int, total: int) -> None:
    log.info("denoising step %d/%d", step, total)
