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


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..io.model_paths import default_models_dir
    from ..metrics.runner import evaluate_folder
    from ..metrics.syncnet import default_syncnet_path

    models_dir = Path(args.models_dir).expanduser() if args.models_dir else default_models_dir()
    syncnet = args.syncnet or default_syncnet_path(models_dir)
    if syncnet is None:
        log.info("no SyncNet weights (--syncnet, or %s): Sync-C/D and Sync-C* are skipped",
                 models_dir / "syncnet" / "syncnet_v2.model")
    insightface_dir = args.insightface_dir or models_dir / "insightface"
    report = evaluate_folder(args.videos, args.intervals, args.out, landmark_backend=args.landmarks,
                             insightface_dir=insightface_dir, syncnet_path=syncnet,
                             device=args.device, num_faces=args.faces, plots=not args.no_plots)
    print(report.markdown_path.read_text(), end="")
    print(f"wrote {report.csv_path}, {report.markdown_path} and {len(report.plot_paths)} plot(s)")
    return 0
