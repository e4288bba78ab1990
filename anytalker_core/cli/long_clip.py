"""``anytalker generate``'s long-clip options (clips longer than ``--window-frames``): the overlap of the
windows, colour matching, re-anchoring and the work folder that makes a killed run resume."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..constants import WINDOW_FRAMES
from ..errors import InputError

__all__ = ["add_long_clip_arguments", "check_long_clip_args", "long_clip_options", "work_dir_for",
           "remove_work_folder"]


def add_long_clip_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("long clips (longer than --window-frames)")
    group.add_argument("--window-frames", type=int, default=WINDOW_FRAMES, metavar="W",
                           help="longest single pass, 4m+1 frames (default 81, the training length); longer clips "
                                "are generated in windows of W frames that overlap by --overlap-frames motion "
                                "frames; 0 = the whole clip in one pass (the reference's behaviour)")
    group.add_argument("--overlap-frames", type=int, default=None, metavar="M",
                           help="motion frames shared by consecutive windows, 4k+1, at most W/2 (default 9, or "
                                "the most a short window allows; 1 = one shared frame)")
    group.add_argument("--overlap-mode", choices=("latent", "y"), default="latent",
                           help="latent (default): the motion frames' latents are pinned at every step; y: they "
                                "are known frames in the I2V conditioning (experimental for AnyTalker)")
    group.add_argument("--overlap-merge", choices=("blend", "drop"), default="blend",
                           help="shared frames: cross-fade the two windows (default) or keep the earlier one's")
    group.add_argument("--no-colour-match", dest="colour_match", action="store_false",
                           help="do not match each window's colours (CIELAB mean/std) to the start image")
    group.add_argument("--clip-reference", choices=("start", "window"), default="start",
                           help="whole-image CLIP tokens of every window: the start image's (default) or each "
                                "window's first frame")
    group.add_argument("--reanchor-every", type=int, default=0, metavar="P",
                           help="re-anchor every P-th window on the start image (default 0: never)")
    group.add_argument("--work-dir", type=Path, default=None,
                           help="folder for the finished windows of a long clip, so a killed run resumes "
                                "(default: .NAME.windows next to --out; removed once the clip is written)")


def check_long_clip_args(args: argparse.Namespace) -> None:
    """Validate the long-clip flags before any model loads (errors name the flag)."""
    from ..generation.window_plan import check_overlap_frames, check_window_frames

    check_window_frames(args.window_frames, "--window-frames")
    if args.overlap_frames is not None:
        check_overlap_frames(args.overlap_frames, args.window_frames, "--overlap-frames")
    if args.reanchor_every < 0:
        raise InputError(f"--reanchor-every must be 0 (never) or a number of windows, got {args.reanchor_every}")


def long_clip_options(args: argparse.Namespace):
    """The flags as :class:`~anytalker_core.generation.window_plan.LongClipOptions`."""
    from ..generation.window_plan import LongClipOptions

    return LongClipOptions(overlap_frames=args.overlap_frames, overlap_mode=args.overlap_mode,
                           merge=args.overlap_merge, colour_match=args.colour_match,
                           clip_reference=args.clip_reference, reanchor_every=args.reanchor_every)


def work_dir_for(out: str | Path, work_dir: str | Path | None) -> Path:
    """The work folder of a long clip written to ``out``: ``work_dir``, or ``.NAME.windows`` next to ``out``."""
    out = Path(out)
    return Path(work_dir) if work_dir is not None else out.parent / f".{out.stem}.windows"


def remove_work_folder(result) -> None:
    """Delete a finished clip's folder of windows (and the work folder when it is left empty)."""
    if result.work_folder is not None:
        from ..generation.window_store import WindowStore

        folder = Path(result.work_folder)
        WindowStore(folder.parent, folder.name).remove()
