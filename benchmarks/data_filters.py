"""Measure prepare's data-filter scores on real clips (the thresholds in docs/training.md, "Data filters").

    python benchmarks/data_filters.py --reference /tmp/anytalker_ref            # motion, cuts, faces
    python benchmarks/data_filters.py --reference /tmp/anytalker_ref --voices   # + voice counting (~2 min)

Real material: the authors' benchmark (``git clone https://github.com/HKUST-C4G/AnyTalker``):
``benchmark/interact_11.mp4`` (a real two-person conversation, 8.6 s, 832×448, 24 fps) and the 29
real left/right speaker tracks of ``benchmark/audio_left|audio_right`` with their turns in
``speaker_duration.json``. Bad clips are made from them: random 0–40 px (or 0–10 px) shifts per frame,
hard cuts to the other person, to a photo, or 4.6 s later in the same shot; slow pans of the real frame.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WINDOW = 81  # frames at 24 fps (3.375 s), the training window


def _jitter(frames: np.ndarray, amp: float, rng: np.random.Generator) -> np.ndarray:
    import cv2

    out = []
    for f in frames:
        dx, dy = rng.uniform(0, amp, 2)
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        out.append(cv2.warpAffine(f, m, (f.shape[1], f.shape[0]), borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)


def motion_and_faces(ref: Path) -> None:
    import cv2
    from skimage import data

    from anytalker_core.faces import load_detector
    from anytalker_core.io.media import read_video
    from train.config import PrepareConfig
    from train.filters import faces_per_frame
    from train.filters_motion import motion_stats
    from train.clip_windows import clip_size, resize_cover

    frames = read_video(ref / "benchmark" / "interact_11.mp4").frames
    rng = np.random.default_rng(0)
    half = frames.shape[2] // 2
    views = {"left": frames[:, :, :half], "right": frames[:, :, half:], "both": frames}
    rows = []
    for name, v in views.items():
        for s in (0, 62, 124):
            w = v[s:s + WINDOW]
            rows += [(f"{name}@{s}", "real", motion_stats(w)), (f"{name}@{s}", "jitter 0-40 px", motion_stats(_jitter(w, 40, rng))),
                     (f"{name}@{s}", "jitter 0-10 px", motion_stats(_jitter(w, 10, rng)))]
        other = views["right" if name == "left" else "left"] if name != "both" else frames[:, :, ::-1]
        photo = cv2.resize(data.astronaut(), (v.shape[2], v.shape[1]))
        rows += [(name, "cut to the other person" if name != "both" else "cut to the mirror image",
                  motion_stats(np.concatenate([v[:40], other[40:WINDOW]]))),
                 (name, "cut to a photo", motion_stats(np.concatenate([v[:40], np.repeat(photo[None], 41, 0)]))),
                 (name, "cut 4.6 s later, same shot", motion_stats(np.concatenate([v[:40], v[150:191]])))]
    for d in (1, 2, 4):
        rows.append((f"pan {d} px/frame", "real frame, moving crop", motion_stats(
            np.stack([frames[i, :, d * i:d * i + half] for i in range(WINDOW)]))))
    print("| window | clip | motion | jitter | cut (histogram) | cut warp error |")
    print("|---|---|---|---|---|---|")
    for where, kind, st in rows:
        print(f"| {where} | {kind} | {st.motion:.2f} | {st.jitter:.2f} | {st.cut:.3f} | {st.warp_error:.1f} |")

    detector, cfg = load_detector("mediapipe"), PrepareConfig()
    print("\n| view | faces expected | frames with that count |")
    print("|---|---|---|")
    for name, v, n in (("both", frames, 2), ("left", views["left"], 1), ("right", views["right"], 1),
                       ("both, jitter 0-40 px", _jitter(frames, 40, rng), 2)):
        v = resize_cover(v, clip_size(v.shape[1:3], cfg))
        counts = np.array([len(f) for f in faces_per_frame(detector, v, range(len(v)), cfg.min_face_fraction)])
        print(f"| {name} | {n} | {(counts == n).sum()} of {len(v)} |")


def voices(ref: Path, distances=(0.25, 0.3, 0.35, 0.4)) -> None:
    from anytalker_core.io.media import load_audio
    from train.filters_speakers import VoiceCounter

    bench = ref / "benchmark"
    turns = json.loads((bench / "speaker_duration.json").read_text())
    seconds = WINDOW / 24

    def spoken(spans, s, e):
        return sum(max(0.0, min(b, e) - max(a, s)) for a, b in spans)

    cases = []  # (expected voices, 16 kHz window)
    for k in range(1, 30):
        left = load_audio(bench / "audio_left" / f"interact_{k}_left.wav", 16000).numpy()
        right = load_audio(bench / "audio_right" / f"interact_{k}_right.wav", 16000).numpy()
        n = min(left.size, right.size)
        t = turns[f"interact_{k}.mp4"]
        for s in np.arange(0, max(0.01, n / 16000 - seconds + 1e-6), 1.0):
            a, b = int(s * 16000), int((s + seconds) * 16000)
            on_left, on_right = spoken(t["left"], s, s + seconds), spoken(t["right"], s, s + seconds)
            if on_left >= 1.0 and on_right >= 1.0:
                cases.append((2, left[a:b] + right[a:b]))
            if on_left >= 1.0:
                cases.append((1, left[a:b]))
            if on_right >= 1.0:
                cases.append((1, right[a:b]))
    ones, twos = sum(c[0] == 1 for c in cases), sum(c[0] == 2 for c in cases)
    print(f"\n{len(cases)} windows of {seconds:.2f} s: {ones} one voice (a speaker track), {twos} two voices (the mix)")
    print("| new_voice_distance | one-voice windows counted 1 | two-voice windows counted 2 |")
    print("|---|---|---|")
    for d in distances:
        counter = VoiceCounter(d, 0.5)
        got = [(truth, counter.count(x).voices) for truth, x in cases]
        ok1 = sum(1 for t, g in got if t == 1 and g == 1)
        ok2 = sum(1 for t, g in got if t == 2 and g == 2)
        print(f"| {d} | {ok1} of {ones} | {ok2} of {twos} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of HKUST-C4G/AnyTalker")
    parser.add_argument("--voices", action="store_true", help="also measure voice counting on the 29 track pairs")
    args = parser.parse_args()
    if not (args.reference / "benchmark" / "interact_11.mp4").is_file():
        parser.error(f"--reference {args.reference}: no benchmark/interact_11.mp4 there")
    motion_and_faces(args.reference)
    if args.voices:
        voices(args.reference)


if __name__ == "__main__":
    main()
