"""`anytalker generate` end to end on the CPU: tiny random models in ComfyUI's layout, the astronaut photo
repeated once per person, espeak-ng speech; the mp4s are read back with PyAV."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anytalker_core.testing.speech import espeak_available, synthesize_speech
from anytalker_core.cli import main
from anytalker_core.testing.demo import build_demo_models, demo_image
from anytalker_core.io.model_paths import MODEL_SPECS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng is needed for real speech"),
]

SENTENCES = [("Hello there.", "en-us"), ("Fine, thanks.", "en-gb"), ("Good morning.", "en-us+f3")]
SHORT = [("Hi.", "en-us"), ("Yes.", "en-gb")]  # ~0.65 s each (espeak-ng pads with silence)
FAST = ["--steps", "2", "--max-area", "64*96", "--face-backend", "mediapipe"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_demo_models(root)
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inputs")
    audio = []
    for i, (text, voice) in enumerate(SENTENCES):
        path = root / f"person{i + 1}.wav"
        synthesize_speech(text, path, voice=voice)
        audio.append(path)
    short = []
    for i, (text, voice) in enumerate(SHORT):
        path = root / f"short{i + 1}.wav"
        synthesize_speech(text, path, voice=voice)
        short.append(path)
    images = {}
    for n in (1, 2, 3):
        images[n] = root / f"people{n}.png"
        Image.fromarray(demo_image(n, size=192)).save(images[n])
    return {"audio": audio, "short": short, "images": images, "root": root}


def read_mp4(path: Path) -> dict:
    import av

    with av.open(str(path)) as container:
        v = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(v)]
        fps = float(v.average_rate)
    with av.open(str(path)) as container:
        a = container.streams.audio[0]
        rate = a.codec_context.sample_rate
        samples = sum(f.samples for f in container.decode(a))
        declared = float(a.duration * a.time_base) if a.duration else None
    return {"frames": np.stack(frames), "fps": fps, "audio_rate": rate, "audio_samples": samples,
            "audio_duration": declared}


@pytest.mark.parametrize("people", [1, 2, 3])
def test_generate_mp4_for_1_2_3_people(people, models, inputs, tmp_path, capsys):
    out = tmp_path / f"clip{people}.mp4"
    argv = ["generate", "--models-dir", str(models), "--image", str(inputs["images"][people]),
            "--prompt", "people talking", "--out", str(out), "--frame-num", "13", *FAST]
    for path in inputs["audio"][:people]:
        argv += ["--audio", str(path)]
    assert main(argv) == 0
    assert out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp files left behind
    clip = read_mp4(out)
    assert clip["frames"].shape[0] == 13
    assert clip["fps"] == 24
    assert clip["frames"].shape[1] % 32 == 0 and clip["frames"].shape[2] % 32 == 0
    assert clip["frames"].shape[1] * clip["frames"].shape[2] <= 64 * 96
    # the mixed speech is muxed in and lasts as long as the video (AAC frames are 1024 samples)
    duration = clip["audio_duration"] or clip["audio_samples"] / clip["audio_rate"]
    assert abs(duration - 13 / 24) < 1100 / clip["audio_rate"] + 1e-3
    from anytalker_core.io.media import load_audio

    heard = load_audio(out)
    spoken = sum(load_audio(p)[: heard.numel()] for p in inputs["audio"][:people])
    assert heard.abs().max() > 0.05  # speech, not silence
    n = min(heard.numel(), spoken.numel())
    assert np.corrcoef(heard[:n].numpy(), spoken[:n].numpy())[0, 1] > 0.9  # the mix of the given voices
    assert "wrote" in capsys.readouterr().out


def test_frame_count_follows_the_audio_in_concat_mode(models, inputs, tmp_path):
    """Without --frame-num the length is the audio's: concat = both sentences back to back, 4n+1 frames."""
    from anytalker_core.io.media import load_audio

    out = tmp_path / "concat.mp4"
    argv = ["generate", "--models-dir", str(models), "--image", str(inputs["images"][2]), "--out", str(out),
            "--audio-mode", "concat", "--audio", str(inputs["short"][0]), "--audio", str(inputs["short"][1]),
            "--steps", "1", "--max-area", "32*64", "--face-backend", "mediapipe"]
    assert main(argv) == 0
    total = sum(load_audio(p).numel() for p in inputs["short"]) / 16000
    expected = ((math.ceil(total * 24) - 1) // 4) * 4 + 1
    clip = read_mp4(out)
    assert clip["frames"].shape[0] == expected
    duration = clip["audio_duration"] or clip["audio_samples"] / clip["audio_rate"]
    assert abs(duration - expected / 24) < 0.07


def test_batch_reference_json(models, inputs, tmp_path, capsys):
    """The reference's input_example format: {name: {image_path, caption, audio_list}} with relative paths."""
    root = inputs["root"]
    batch = root / "tasks.json"
    batch.write_text(json.dumps({
        "solo": {"image_path": "people1.png", "caption": "a woman talks", "audio_list": ["person1.wav"]},
        "duo": {"image_path": "people2.png", "caption": "two people", "enhance_caption": "two people talk",
                "audio_list": ["person1.wav", "person2.wav"], "audio_type": "concat"},
    }))
    out_dir = tmp_path / "results"
    argv = ["generate", "--models-dir", str(models), "--batch", str(batch), "--out", str(out_dir),
            "--frame-num", "9", *FAST]
    assert main(argv) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["duo.mp4", "solo.mp4"]
    for name in ("solo", "duo"):
        assert read_mp4(out_dir / f"{name}.mp4")["frames"].shape[0] == 9
    assert "2 generated, 0 skipped, 0 failed" in capsys.readouterr().out
    # a second run skips what exists
    assert main(argv) == 0
    assert "0 generated, 2 skipped" in capsys.readouterr().out  # without loading any model


def test_batch_continues_after_a_bad_task(models, inputs, tmp_path, capsys):
    """MultiTalk-style list: the task with 2 voices for a 1-face photo fails with a clear message, the other runs."""
    root = inputs["root"]
    batch = root / "tasks_list.json"
    batch.write_text(json.dumps([
        {"name": "bad", "prompt": "x", "cond_image": "people1.png",
         "cond_audio": {"person1": "person1.wav", "person2": "person2.wav"}},
        {"name": "good", "prompt": "y", "cond_image": "people1.png", "cond_audio": {"person1": "person2.wav"}},
    ]))
    out_dir = tmp_path / "results"
    argv = ["generate", "--models-dir", str(models), "--batch", str(batch), "--out", str(out_dir),
            "--frame-num", "9", *FAST]
    assert main(argv) == 2  # an entry with bad input: exit 2 once the others are written
    assert [p.name for p in out_dir.iterdir()] == ["good.mp4"]
    assert "1 generated, 0 skipped, 1 failed (bad)" in capsys.readouterr().out


def test_missing_weights_lists_every_file_at_once(tmp_path, inputs, caplog):
    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    (models / "vae" / "wan_2.1_vae.safetensors").write_bytes(b"x")  # one present, four missing
    argv = ["generate", "--models-dir", str(models), "--image", str(inputs["images"][1]),
            "--audio", str(inputs["audio"][0]), "--out", str(tmp_path / "o.mp4")]
    assert main(argv) == 2
    message = caplog.text
    assert "4 model file(s) missing" in message
    for role in ("dit", "text_encoder", "clip_vision", "wav2vec"):
        spec = MODEL_SPECS[role]
        assert f"{models / spec.folder}/" in message, role
        assert spec.option in message
    assert "umt5_xxl_fp16.safetensors" in message and "clip_vision_h.safetensors" in message
    assert f"{models / 'vae'}/" not in message
    assert not (tmp_path / "o.mp4").exists()


def test_two_voices_one_face_is_a_clear_error(models, inputs, tmp_path, caplog):
    out = tmp_path / "o.mp4"
    argv = ["generate", "--models-dir", str(models), "--image", str(inputs["images"][1]), "--out", str(out),
            "--audio", str(inputs["audio"][0]), "--audio", str(inputs["audio"][1]), *FAST]
    assert main(argv) == 2
    assert "found 1 face but 2 audio tracks" in caplog.text
    assert not out.exists()


def test_boxes_count_must_match_audio(models, inputs, tmp_path, caplog):
    argv = ["generate", "--models-dir", str(models), "--image", str(inputs["images"][2]),
            "--out", str(tmp_path / "o.mp4"), "--audio", str(inputs["audio"][0]), "--audio", str(inputs["audio"][1]),
            "--boxes", "10,10,60,60", *FAST]
    assert main(argv) == 2
    assert "--boxes: 1 box(es) for 2 --audio file(s)" in caplog.text  # before any model loads


def test_preview_faces_only(inputs, tmp_path, capsys):
    out = tmp_path / "faces.png"
    argv = ["generate", "--image", str(inputs["images"][3]), "--audio", str(inputs["audio"][0]),
            "--audio", str(inputs["audio"][1]), "--audio", str(inputs["audio"][2]),
            "--preview-faces", str(out), "--face-backend", "mediapipe"]
    assert main(argv) == 0
    preview = np.asarray(Image.open(out))
    original = np.asarray(Image.open(inputs["images"][3]))
    assert preview.shape == original.shape and (preview != original).any()
    printed = capsys.readouterr().out
    assert "3 face(s), left to right" in printed
    xs = [float(part.split("[")[1].split(",")[0]) for part in printed.split("#")[1:4]]
    assert xs == sorted(xs)


@pytest.mark.parametrize("argv, needle", [
    (["--audio", "a.wav"], "--image is required"),
    (["--image", "x.png"], "--audio is required"),
    (["--image", "x.png", "--audio", "a.wav", "--frame-num", "10"], "4n+1"),
    (["--image", "x.png", "--audio", "a.wav", "--text-guidance", "5"], "--audio-guidance"),
    (["--image", "x.png", "--audio", "a.wav", "--out", "o.avi"], ".mp4"),
    (["--image", "nope.png", "--audio", "nope.wav"], "not found"),
])
def test_argument_errors(argv, needle, caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", *argv]) == 2
    assert needle in caplog.text


def test_demo_mode(tmp_path, caplog):
    out = tmp_path / "demo.mp4"
    assert main(["generate", "--demo", "--out", str(out), "--steps", "1", "--max-area", "32*64",
                 "--frame-num", "9"]) == 0
    assert "demo mode: random weights, the output is noise" in caplog.text
    assert read_mp4(out)["frames"].shape[0] == 9
