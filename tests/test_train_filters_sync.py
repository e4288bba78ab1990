"""SyncNet pairing of speaker tracks with faces in ``prepare``.

The released SyncNet weights cannot be downloaded here, so the filter runs its real code path (weights
file from the config → :func:`load_syncnet` → ``syncnet_python`` crops → Sync-C of every track against
every face) on a SyncNet of the real layout whose weights are designed, not trained
(:mod:`anytalker_core.testing.mouth_syncnet`: lip embedding = mouth darkness per frame, audio
embedding = loudness per frame). The two faces are a real photo and its mirror image whose mouths
open with the loudness of their own espeak-ng sentence. What is tested is the decision, with Sync-C
values this network really computes: the right order is kept, exchanged tracks and a wrong voice
are dropped with their reasons. The thresholds below suit this network's scale, not the released one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from anytalker_core.io.media import write_video
import train.prepare  # noqa: F401  (this checkout's train package first)
from test_train_prepare import models  # noqa: F401 - the tiny encoder files fixture

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

SIZE = 96
FRAMES = 33  # 1.375 s at 24 fps


@pytest.fixture(scope="module")
def duo(tmp_path_factory) -> tuple[Path, Path]:
    import cv2
    import soundfile
    from skimage import data

    from anytalker_core.faces import load_detector
    from anytalker_core.metrics.syncnet import save_syncnet
    from anytalker_core.testing.mouth_syncnet import loudness_envelope, make_mouth_syncnet, mouth_clip
    from anytalker_core.testing.speech import synthesize_speech

    root = tmp_path_factory.mktemp("duo")
    weights = save_syncnet(make_mouth_syncnet(), root / "syncnet_v2.model")
    m = np.float32([[1, 0, -60], [0, 1, -20]])
    face = cv2.resize(cv2.warpAffine(data.astronaut(), m, (300, 300)), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    box = load_detector("mediapipe").detect(face)[0]
    n = int(FRAMES / 24 * 16000)
    said = {name: synthesize_speech(text, voice=voice, pitch=pitch)[:n] for name, text, voice, pitch in (
        ("a", "Hi. Oh, yes. Okay.", "en-us", 50),
        ("b", "Stop. Go. Wait, stop.", "en-us+m3", 30),
        ("c", "Nobody knew where the old road went.", "en+f4", 75))}

    def speaking(track: torch.Tensor, mirror: bool) -> np.ndarray:
        img = face[:, ::-1].copy() if mirror else face
        cx = (box.x1 + box.x2) / 2
        cx = SIZE - cx if mirror else cx
        bs = max(box.width, box.height) / 2
        return mouth_clip(img, (cx, (box.y1 + box.y2) / 2 + 0.55 * bs), 0.45 * bs,
                          loudness_envelope(track, 24, FRAMES))

    video = np.concatenate([speaking(said["a"], False), speaking(said["b"], True)], axis=2)  # [T, 96, 192, 3]
    for clip, tracks in (("duo_good", "ab"), ("duo_swapped", "ba"), ("duo_wrong_voice", "ac")):
        write_video(root / "clips" / f"{clip}.mp4", video, 24, said["a"] + said["b"])
        for k, name in enumerate(tracks):
            soundfile.write(str(root / "clips" / f"{clip}.speaker{k}.wav"), said[name].numpy(), 16000)
    return root / "clips", weights


def _config(clips: Path, out: Path, models: dict, **kw):  # noqa: F811
    from train.config import PrepareConfig

    return PrepareConfig(input=str(clips), output=str(out), max_area=SIZE * 2 * SIZE, max_frames=FRAMES,
                         min_frames=FRAMES, num_faces=2, min_sync_confidence=1.0, sync_margin=0.2, **models, **kw)


def test_tracks_are_paired_with_their_faces(duo, models: dict, tmp_path: Path):  # noqa: F811
    from train.prepare import prepare

    clips, weights = duo
    report = prepare(_config(clips, tmp_path / "cache", models, syncnet=str(weights)))
    by_id = {r["id"]: r for r in report["results"]}
    got = {k: (r["status"], r.get("reason")) for k, r in by_id.items()}
    assert got == {"duo_good": ("kept", None), "duo_swapped": ("dropped", "sync_swapped"),
                   "duo_wrong_voice": ("dropped", "sync_low")}, {k: (r.get("sync_c"), r.get("detail"))
                                                                   for k, r in by_id.items()}
    good = by_id["duo_good"]["sync_c"]  # [face][track]
    assert good[0][0] > good[1][0] + 0.2 and good[1][1] > good[0][1] + 0.2
    assert by_id["duo_good"]["sync_offset"][0][0] == 0 and by_id["duo_good"]["sync_offset"][1][1] == 0
    swapped = by_id["duo_swapped"]["sync_c"]
    assert swapped[1][0] == pytest.approx(good[1][1], abs=1e-3)  # the same pair, found in the other cell
    assert "speaker track 0 (duo_swapped.speaker0.wav) fits face 2" in by_id["duo_swapped"]["detail"]
    assert "speaker track 1 (duo_wrong_voice.speaker1.wav) against face 2: Sync-C" in by_id["duo_wrong_voice"]["detail"]
    wrong = by_id["duo_wrong_voice"]["sync_c"]
    assert max(wrong[0][1], wrong[1][1]) < 1.0 <= min(good[0][0], good[1][1])  # no face fits the wrong voice


def test_missing_syncnet_weights_are_refused_before_any_work(duo, models: dict, tmp_path: Path):  # noqa: F811
    from anytalker_core.errors import MissingModelError
    from train.prepare import prepare

    clips, _ = duo
    with pytest.raises(MissingModelError, match="prepare config 'syncnet': SyncNet weights not found at"):
        prepare(_config(clips, tmp_path / "cache", models, syncnet=str(tmp_path / "syncnet_v2.model")))
    assert not (tmp_path / "cache" / "reports").exists()
