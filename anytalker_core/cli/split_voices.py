"""``anytalker split-voices``: one recording of a conversation -> one track per person + who speaks when.

Example::

    anytalker split-voices podcast.mp3 --speakers 2 --out voices/
    # voices/speaker1.wav  voices/speaker2.wav  voices/intervals.json ({"left": [[s, e], ...], "right": [...]})

Person 1 is the first to speak (``--speaker-order first``) or the one who speaks most
(``--speaker-order most``); ``--order 2,1`` then swaps them. In ``anytalker generate`` person ``k``
drives the ``k``-th face from the left.
"""

from __future__ import annotations

import argparse
import logging

from ..errors import InputError

log = logging.getLogger(__name__)

ORDER_RULES = ("first", "most")


def parse_order(text: str | None) -> list[int] | None:
    """``"2,1,3"`` -> ``[2, 1, 3]`` (1-based speaker numbers), for ``--order``."""
    if text is None or not text.strip():
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"--order: expected comma-separated speaker numbers such as 2,1, got {text!r}") from None


def add_speaker_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The options ``split-voices`` and ``generate --conversation`` share."""
    parser.add_argument(f"--{prefix}speakers", type=int, metavar="N",
                        help="how many people talk (1-8); leave out to estimate it")
    parser.add_argument(f"--{prefix}speaker-order", choices=ORDER_RULES, default="first",
                        help="who is person 1: 'first' = the first to speak (default), 'most' = the one who "
                             "speaks longest; person k drives the k-th face from the left")
    parser.add_argument(f"--{prefix}order", metavar="2,1",
                        help="manual override after the rule: the speaker numbers in the order you want them "
                             "(e.g. 2,1 swaps two people)")
    parser.add_argument(f"--{prefix}separate", metavar="MODEL",
                        help="an Asteroid separation checkpoint (e.g. a ConvTasNet's pytorch_model.bin): each "
                             "person's track becomes the separated source matched to their voice (gated to their "
                             "turns) instead of the mix; needs pip install --no-deps asteroid asteroid-filterbanks")


def add_conversation_arguments(parser) -> None:
    """``anytalker generate --conversation MIX`` and the speaker options."""
    from pathlib import Path

    parser.add_argument("--conversation", type=Path, metavar="MIX",
                        help="instead of --audio: one recording of the whole conversation; it is split into one "
                             "track per person (see anytalker split-voices) and the tracks play at once (pad)")
    add_speaker_arguments(parser)


def check_conversation_args(args: argparse.Namespace) -> None:
    """``generate``: audio comes from --audio or --conversation (not both, not with --batch or concat)."""
    if not args.demo and not args.batch and not args.audio and args.conversation is None \
            and args.preview_faces is None:
        raise InputError("--audio is required: one audio file per person, left to right (or --conversation MIX)")
    if args.conversation is not None and not args.conversation.is_file():
        raise InputError(f"--conversation '{args.conversation}': no such file")
    if args.conversation is not None and (args.audio or args.batch):
        raise InputError("--conversation replaces --audio (and cannot be used with --batch); give one or the other")
    if args.conversation is not None and args.audio_mode == "concat":
        raise InputError("--conversation keeps everyone on the recording's timeline: use --audio-mode pad")
    if args.conversation is None and (args.speakers is not None or args.order or args.separate):
        raise InputError("--speakers, --order and --separate only apply to --conversation MIX")
    check_separate(args)


def check_separate(args: argparse.Namespace) -> None:
    """``--separate MODEL`` must name a file (read before any other model is loaded)."""
    from pathlib import Path

    if args.separate is not None and not Path(args.separate).is_file():
        raise InputError(f"--separate '{args.separate}': no such file; give an Asteroid separation checkpoint "
                         "(.bin / .pth) or leave --separate out")


def person_tracks(args: argparse.Namespace, files) -> list:
    """``generate``: one 16 kHz mono track per person, from ``files`` or, with ``--conversation``, the
    recording split by speaker (person k = face k)."""
    import torch

    from ..audio.voices import split_voices
    from ..constants import SAMPLE_RATE
    from ..io.media import load_audio

    if args.conversation is None:
        return [load_audio(p) for p in files]
    result = split_voices(load_audio(args.conversation), SAMPLE_RATE, num_speakers=args.speakers,
                          speaker_order=args.speaker_order, order=parse_order(args.order), separate=args.separate)
    log.info("--conversation: %d speaker(s); speaking intervals %s", result.diarization.num_speakers,
             result.intervals)
    return [torch.from_numpy(track[0]) for track in result.tracks]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", metavar="MIX", help="the conversation: one audio (or video) file, any format")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for speaker1.wav ... speakerN.wav and intervals.json")
    add_speaker_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..audio.voices import split_voices, write_split
    from ..io.media import load_audio_native

    check_separate(args)
    wave, rate = load_audio_native(args.audio, "MIX")
    result = split_voices(wave, rate, num_speakers=args.speakers, speaker_order=args.speaker_order,
                          order=parse_order(args.order), separate=args.separate,
                          progress=lambda done, total: log.debug("split-voices: stage %d/%d", done, total))
    paths = write_split(result, args.out)
    diar = result.diarization
    found = "given" if args.speakers is not None else "estimated"
    print(f"{diar.num_speakers} speaker(s) ({found}) in {diar.duration:.1f} s of audio")
    for i, path in enumerate(paths[:-1]):
        print(f"  {path}: {len(diar.turns[i])} turn(s), {diar.speaking_time(i):.1f} s of speech")
    both = diar.overlaps()
    if both:
        print(f"  overlapping speech: {len(both)} span(s), {sum(e - s for s, e, _ in both):.1f} s, in the tracks "
              "of everyone speaking in it")
    print(f"  {paths[-1]}")
    return 0
