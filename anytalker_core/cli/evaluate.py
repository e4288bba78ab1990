"""``anytalker evaluate``: Interactivity (and Sync-C / Sync-C* with SyncNet weights) for a folder of videos.

Example::

    anytalker evaluate --videos outputs/ --intervals speaker_duration.json --out eval/ \\
        --syncnet models/syncnet/syncnet_v2.model
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", required=True, metavar="DIR",
                        help="folder of generated videos (.mp4 .avi .mov .mkv .webm)")
    parser.add_argument("--intervals", metavar="FILE.json",
                        help='speaking intervals: {"clip.mp4": {"left": [[start_s, end_s], ...], "right": [...]}} '
                             "(the benchmark's speaker_duration.json); without it every face counts as listening")
    parser.add_argument("--out", required=True, metavar="DIR", help="where results.csv, results.md and plots/ go")
    parser.add_argument("--landmarks", choices=("mediapipe", "insightface"), default="mediapipe",
                        help="landmark source: mediapipe (offline, default) or insightface (the reference's; "
                             "needs --insightface-dir)")
    parser.add_argument("--models-dir", metavar="DIR",
                        help="ComfyUI-style models folder (default $ANYTALKER_MODELS_DIR or ./models): "
                             "syncnet/syncnet_v2.model and insightface/models/buffalo_l/ are found there")
    parser.add_argument("--insightface-dir", metavar="DIR",
                        help="InsightFace folder holding models/buffalo_l/ (default <models-dir>/insightface)")
    parser.add_argument("--syncnet", metavar="FILE",
                        help="SyncNet weights (syncnet_v2.model or .safetensors) for Sync-C/D and Sync-C* "
                             "(default <models-dir>/syncnet/syncnet_v2.model if present, else SyncNet is skipped)")
    parser.add_argument("--faces", type=int, default=2, help="faces every frame must show (default 2)")
    parser.add_argument("--device", default="cpu", help="torch device for SyncNet (default cpu)")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNG motion plots")
    drift = parser.add_argument_group("drift report (long clips)")
    drift.add_argument("--drift", action="store_true",
                       help="also write drift/<clip>.csv|.md|.png: per window, colour difference (ΔE) and face-shape "
                            "similarity to the start image, mouth motion vs the speaker's audio, Interactivity")
    drift.add_argument("--window-frames", type=int, default=81, metavar="W",
                       help="the window length the clips were generated with (default 81)")
    drift.add_argument("--overlap-frames", type=int, default=None, metavar="M",
                       help="their overlap (default: generate's default, 9 for W=81)")
    drift.add_argument("--start-images", metavar="DIR",
                       help="folder of start images named like the clips (<clip>.png); default: each clip's first frame")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..generation.window_plan import check_overlap_frames, check_window_frames
    from ..errors import InputError
    from ..io.model_paths import default_models_dir
    from ..metrics.runner import evaluate_folder
    from ..metrics.syncnet import default_syncnet_path
    from .validate import check_device, check_output_dir

    if not Path(args.videos).is_dir():
        raise InputError(f"--videos '{args.videos}': no such folder")
    if args.intervals is not None and not Path(args.intervals).is_file():
        raise InputError(f"--intervals '{args.intervals}': no such file")
    if args.syncnet is not None and not Path(args.syncnet).is_file():
        raise InputError(f"--syncnet '{args.syncnet}': no such file")
    if not 1 <= args.faces <= 8:
        raise InputError(f"--faces must be between 1 and 8, got {args.faces}")
    check_output_dir(Path(args.out), "--out")
    device = str(check_device(args.device))
    if args.drift:
        check_window_frames(args.window_frames, "--window-frames")
        if args.overlap_frames is not None:
            check_overlap_frames(args.overlap_frames, args.window_frames, "--overlap-frames")
    models_dir = Path(args.models_dir).expanduser() if args.models_dir else default_models_dir()
    syncnet = args.syncnet or default_syncnet_path(models_dir)
    if syncnet is None:
        log.info("no SyncNet weights (--syncnet, or %s): Sync-C/D and Sync-C* are skipped",
                 models_dir / "syncnet" / "syncnet_v2.model")
    insightface_dir = args.insightface_dir or models_dir / "insightface"
    report = evaluate_folder(args.videos, args.intervals, args.out, landmark_backend=args.landmarks,
                             insightface_dir=insightface_dir, syncnet_path=syncnet,
                             device=device, num_faces=args.faces, plots=not args.no_plots,
                             drift_window_frames=args.window_frames if args.drift else None,
                             drift_overlap_frames=args.overlap_frames, start_images=args.start_images)
    print(report.markdown_path.read_text(), end="")
    print(f"wrote {report.csv_path}, {report.markdown_path} and {len(report.plot_paths)} plot(s)"
          + (f"; drift reports in {Path(args.out) / 'drift'}" if args.drift else ""))
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable video(s):\n  " + "\n  ".join(report.skipped))
        return 2
    return 0
