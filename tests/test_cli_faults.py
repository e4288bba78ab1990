"""Bad input and faults at the CLI boundary (issue "Bad input and faults"): one row per case.

Every row asserts the exit code (README "Exit codes": 0 ok, 1 run failed, 2 bad input, 130 interrupted),
the message, and that nothing is left behind (no partial mp4, no ``.NAME.*.tmp.*``). Checks that must
happen before any model loads run with ``AnyTalkerPipeline.from_paths`` replaced by a function that
fails the test. Real inputs: scikit-image's astronaut photo, espeak-ng speech, tiny random models in the
real file formats (the ``--demo`` set). Signals are tested in subprocesses (tests/test_cli_signals.py).
"""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anytalker_core.cli import main
from anytalker_core.generation.pipeline import AnyTalkerPipeline
from anytalker_core.testing.demo import build_demo_models, demo_image
from anytalker_core.testing.speech import espeak_available, synthesize_speech

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is needed for real speech")

FAST = ["--steps", "2", "--max-area", "32*64", "--face-backend", "mediapipe", "--frame-num", "5"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_demo_models(root)
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inputs")
    audio = []
    for i, (text, voice) in enumerate([("Hello there.", "en-us"), ("Fine, thanks.", "en-gb")]):
        audio.append(root / f"person{i + 1}.wav")
        synthesize_speech(text, audio[-1], voice=voice)
    images = {}
    for n in (1, 2):
        images[n] = root / f"people{n}.png"
        Image.fromarray(demo_image(n, size=160)).save(images[n])
    silent = root / "silent.wav"
    import wave

    with wave.open(str(silent), "wb") as fh:
        fh.setnchannels(1), fh.setsampwidth(2), fh.setframerate(16000)
        fh.writeframes(b"\0\0" * 16000)
    (root / "empty.wav").write_bytes(b"")
    (root / "corrupt.wav").write_bytes(b"RIFF\x10\0\0\0WAVEfmt garbage" * 4)
    return {"root": root, "audio": audio, "images": images, "silent": silent}


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the generation models are loaded (the check must come before)."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the generation models were loaded before the bad input was found")

    monkeypatch.setattr(AnyTalkerPipeline, "from_paths", classmethod(refuse))


def leftovers(folder: Path) -> list[str]:
    """Everything under ``folder`` (recursively), as relative names."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_cli(argv: list[str], caplog) -> tuple[int, str]:
    caplog.clear()
    code = main([str(a) for a in argv])
    return code, caplog.text


# --------------------------------------------------------------------- checks before any model loads


def _generate(models, inputs, out, *extra, people=1):
    argv = ["generate", "--models-dir", models, "--image", inputs["images"][people], "--out", out, *FAST]
    for path in inputs["audio"][:people]:
        argv += ["--audio", path]
    return argv + list(extra)


EARLY_ROWS = [
    # (row id, extra argv, expected message fragment)
    ("guidance-nan", ["--guidance", "nan"], "--guidance must be a finite number >= 0, got nan"),
    ("guidance-negative", ["--guidance", "-1"], "--guidance must be a finite number >= 0"),
    ("text-guidance-alone", ["--text-guidance", "5"], "--text-guidance and --audio-guidance go together"),
    ("audio-guidance-inf", ["--text-guidance", "5", "--audio-guidance", "inf"], "--audio-guidance must be a finite"),
    ("shift-zero", ["--shift", "0"], "--shift must be a finite number > 0"),
    ("seed-negative", ["--seed", "-5"], "--seed must be -1 (random) or between 0 and 2**64-1"),
    ("steps-zero", ["--steps", "0"], "--steps must be between 1 and 1000"),
    ("fps-5000", ["--fps", "5000"], "--fps must be between 1 and 120"),
    ("frame-num-not-4n1", ["--frame-num", "10"], "--frame-num must be 4n+1"),
    ("frame-num-beyond-audio", ["--frame-num", "401"], "--frame-num 401 exceeds the audio"),
    ("window-frames", ["--window-frames", "10"], "--window-frames"),
    ("boxes-syntax", ["--boxes", "1,2,3"], "--boxes: '1,2,3' has 3 numbers"),
    ("boxes-count", ["--boxes", "1,1,20,20;30,1,50,20"], "--boxes: 2 box(es) for 1 --audio file(s)"),
    ("boxes-outside-image", ["--boxes", "1000,1000,1100,1100"], "--boxes: face box 1"),
    ("device-unknown", ["--device", "tpu9"], "--device"),
    ("dit-config-missing", ["--dit-config", "/nonexistent/config.json"], "--dit-config '/nonexistent/config.json'"),
    ("out-suffix", ["--out", "o.avi"], "expected a .mp4 file name"),
]


@pytest.mark.parametrize("row, extra, needle", EARLY_ROWS, ids=[r[0] for r in EARLY_ROWS])
def test_bad_flags_fail_before_any_model_loads(row, extra, needle, models, inputs, tmp_path, caplog,
                                               no_model_load, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, text = run_cli(_generate(models, inputs, tmp_path / "o.mp4", *extra), caplog)
    assert code == 2, text
    assert needle in text
    assert text.count("ERROR") == 1  # one line, no traceback
    assert "Traceback" not in text
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only machine")
def test_device_cuda_without_cuda(models, inputs, tmp_path, caplog, no_model_load):
    code, text = run_cli(_generate(models, inputs, tmp_path / "o.mp4", "--device", "cuda"), caplog)
    assert code == 2
    assert ("CPU-only build" in text if torch.version.cuda is None else "no CUDA GPU is visible" in text)
    assert "--device cpu" in text
    assert leftovers(tmp_path) == []


def test_two_voices_one_face_before_models(models, inputs, tmp_path, caplog, no_model_load):
    argv = _generate(models, inputs, tmp_path / "o.mp4", "--audio", inputs["audio"][1])
    code, text = run_cli(argv, caplog)
    assert code == 2
    assert "found 1 face but 2 audio tracks were given; pass --boxes" in text
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("where, needle", [
    ("existing-folder", "is an existing folder; give a file name such as"),
    ("read-only", "cannot write in '/proc'"),
    ("parent-is-a-file", "is a file, not a folder"),
])
def test_output_location_checked_first(where, needle, models, inputs, tmp_path, caplog, no_model_load):
    (tmp_path / "a_file").write_text("x")
    out = {"existing-folder": tmp_path, "read-only": Path("/proc/anytalker-test/o.mp4"),
           "parent-is-a-file": tmp_path / "a_file" / "o.mp4"}[where]
    code, text = run_cli(_generate(models, inputs, out), caplog)
    assert code == 2, text
    assert f"--out '{out}'" in text and needle in text
    assert leftovers(tmp_path) == ["a_file"]


def test_full_disk_checked_first(models, inputs, tmp_path, caplog, no_model_load, monkeypatch):
    import shutil
    from collections import namedtuple

    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")

    def nearly_full(path):  # the OS says: 10 kB free
        return usage(real(path).total, real(path).total, 10_000)

    monkeypatch.setattr("anytalker_core.cli.validate.shutil.disk_usage", nearly_full)
    code, text = run_cli(_generate(models, inputs, tmp_path / "o.mp4"), caplog)
    assert code == 2
    assert "--out" in text and "0.0 MB free" in text and "the clip needs about" in text
    assert leftovers(tmp_path) == []


def test_preview_faces_into_unwritable_path(inputs, caplog, tmp_path):
    out = Path("/proc/anytalker-test/faces.png")
    code, text = run_cli(["generate", "--image", inputs["images"][1], "--preview-faces", out,
                          "--face-backend", "mediapipe"], caplog)
    assert code == 2
    assert f"--preview-faces '{out}': cannot write in '/proc'" in text


@pytest.mark.parametrize("case, needle", [
    ("missing", "input file(s) not found: --audio #1"),
    ("empty", "--audio #1: audio file"),
    ("corrupt", "--audio #1: audio file"),
    ("silent", "every audio track is silent"),
    ("image-missing", "input file(s) not found: --image"),
    ("image-not-an-image", "not a readable image (Pillow cannot identify it)"),
])
def test_bad_input_files(case, needle, models, inputs, tmp_path, caplog, no_model_load):
    root = inputs["root"]
    audio = {"missing": tmp_path / "absent.wav", "empty": root / "empty.wav", "corrupt": root / "corrupt.wav",
             "silent": inputs["silent"]}.get(case, inputs["audio"][0])
    image = inputs["images"][1]
    if case == "image-missing":
        image = tmp_path / "absent.png"
    elif case == "image-not-an-image":
        image = root / "corrupt.wav"
    argv = ["generate", "--models-dir", models, "--image", image, "--audio", audio, "--out", tmp_path / "o.mp4",
            *FAST]
    code, text = run_cli(argv, caplog)
    assert code == 2, text
    assert needle in text
    assert "Traceback" not in text
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- images


def _expected_grey(values: np.ndarray, scale: float) -> np.ndarray:
    grey = np.round(values.astype(np.float64) / scale).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def test_images_of_every_mode(tmp_path):
    """Each Pillow mode gives the right RGB values (16-bit/32-bit/float are scaled, not clipped to white)."""
    from anytalker_core.io.images import load_image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    grey16 = rng.integers(0, 65536, (24, 32), dtype=np.uint16)
    cases = {
        "I16.png": (Image.fromarray(grey16), _expected_grey(grey16, 257.0)),
        "I32_16bit.tif": (Image.fromarray(grey16.astype(np.int32)), _expected_grey(grey16, 257.0)),
        "I32_8bit.tif": (Image.fromarray(rgb[..., 0].astype(np.int32)), _expected_grey(rgb[..., 0], 1.0)),
        "F01.tif": (Image.fromarray(rgb[..., 1].astype(np.float32) / 255.0), _expected_grey(rgb[..., 1], 1.0)),
        "F255.tif": (Image.fromarray(rgb[..., 2].astype(np.float32)), _expected_grey(rgb[..., 2], 1.0)),
        "L.png": (base.convert("L"), np.asarray(base.convert("L").convert("RGB"))),
        "LA.png": (base.convert("LA"), np.asarray(base.convert("L").convert("RGB"))),
        "P.png": (base.convert("P"), np.asarray(base.convert("P").convert("RGB"))),
        "RGBA.png": (base.convert("RGBA"), rgb),
        "CMYK.jpg": (base.convert("CMYK"), None),
        "1.png": (base.convert("1"), np.asarray(base.convert("1").convert("RGB"))),
    }
    for name, (img, expected) in cases.items():
        path = tmp_path / name
        img.save(path)
        out = load_image(path)
        assert out.dtype == np.uint8 and out.shape == (24, 32, 3), name
        if expected is not None:
            np.testing.assert_array_equal(out, expected, err_msg=name)
    # CMYK (lossy jpg): close to the original colours, nowhere near blank
    cmyk = load_image(tmp_path / "CMYK.jpg").astype(float)
    assert np.abs(cmyk - rgb).mean() < 20 and cmyk.std() > 40
    # 16-bit grey: the full range survives (Pillow's own convert("RGB") clips it to 255 = all white)
    assert np.asarray(Image.fromarray(grey16).convert("RGB")).mean() > 250
    assert abs(load_image(tmp_path / "I16.png").mean() - grey16.mean() / 257) < 1


@pytest.mark.parametrize("make, needle", [
    (lambda: Image.fromarray(np.full((8, 8), 70000, np.int32)), "beyond 16 bits"),
    (lambda: Image.fromarray(np.full((8, 8), -3.0, np.float32)), "expected 0..1 or 0..255"),
    (lambda: Image.fromarray(np.full((8, 8), np.nan, np.float32)), "NaN or infinite"),
])
def test_images_without_a_faithful_conversion_are_refused(make, needle, tmp_path, caplog):
    path = tmp_path / "odd.tif"
    make().save(path)
    code, text = run_cli(["generate", "--image", path, "--preview-faces", tmp_path / "f.png"], caplog)
    assert code == 2
    assert f"--image '{path}'" in text and needle in text
    assert leftovers(tmp_path) == ["odd.tif"]


def test_decompression_bomb_refused_with_the_limit(tmp_path, caplog):
    path = tmp_path / "huge.png"
    Image.new("1", (13416, 13416)).save(path)  # 180 MP, a few kB on disk: Pillow itself refuses it at open
    code, text = run_cli(["generate", "--image", path, "--preview-faces", tmp_path / "f.png"], caplog)
    assert code == 2
    assert f"--image '{path}': 180.0 MP is larger than the limit of 89.5 MP" in text
    path = tmp_path / "big.png"
    Image.new("1", (10000, 9000)).save(path)  # 90 MP: over our limit, under Pillow's error threshold
    code, text = run_cli(["generate", "--image", path, "--preview-faces", tmp_path / "f.png"], caplog)
    assert code == 2
    assert f"--image '{path}': 10000x9000 pixels, 90.0 MP is larger than the limit of 89.5 MP" in text
    assert leftovers(tmp_path) == ["big.png", "huge.png"]


# ------------------------------------------------------------------------------------ model files


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    from anytalker_core.model.config import AnyTalkerConfig
    from anytalker_core.model.dit import AnyTalkerDiT

    torch.manual_seed(0)
    return AnyTalkerDiT(AnyTalkerConfig.tiny()).state_dict()


def _save_pth(sd, path):
    """The released format, with the tiny model's config beside it (``<stem>.config.json``)."""
    from anytalker_core.model.config import AnyTalkerConfig

    torch.save({"model": sd}, path)
    path.with_suffix(".config.json").write_text(json.dumps(AnyTalkerConfig.tiny().to_dict()))
    return path


def _save_st(sd, path, metadata):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def _save_pickle(obj, path):
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def _save_truncated(sd, path):
    full = _save_pth(sd, path.with_name("full.pth")).read_bytes()
    path.with_name("full.pth").unlink()
    path.with_name("full.config.json").rename(path.with_suffix(".config.json"))
    path.write_bytes(full[:5000])
    return path


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


CHECKPOINT_ROWS = [
    ("missing-audio_emb.proj1", lambda sd, p: _save_pth({k: v for k, v in sd.items() if k != "audio_emb.proj1.weight"},
                                                        p / "a.pth"), "the weight 'audio_emb.proj1.weight' is missing"),
    ("embedded-config-not-json", lambda sd, p: _save_st(sd, p / "a.safetensors", {"anytalker_config": "{not json"}),
     "the config embedded in its metadata ('anytalker_config') is not valid JSON"),
    ("embedded-config-wrong-type", lambda sd, p: _save_st(sd, p / "a.safetensors", {"anytalker_config": "[1, 2]"}),
     "expected a JSON object of model settings, got list"),
    ("embedded-config-bad-value", lambda sd, p: _save_st(
        sd, p / "a.safetensors", {"anytalker_config": json.dumps({"afca": "fused", "dim": "wide"})}),
     "the config embedded in its metadata"),
    ("int-tensors", lambda sd, p: _save_pth({k: (v * 100).to(torch.int32) if k.startswith("blocks.0.") else v
                                             for k, v in sd.items()}, p / "a.pth"),
     "integer or boolean tensors where weights must be floating point: blocks.0."),
    ("malicious-pickle", lambda sd, p: _save_pickle({"model": _Evil()}, p / "a.pth"),
     "holds Python objects other than tensors"),
    ("truncated", lambda sd, p: _save_truncated(sd, p / "a.pth"), "truncated or corrupt"),
]


@pytest.mark.parametrize("row, make, needle", CHECKPOINT_ROWS, ids=[r[0] for r in CHECKPOINT_ROWS])
def test_bad_checkpoints_are_clear_errors(row, make, needle, tmp_path, caplog):
    src = make(_tiny_state_dict(), tmp_path)
    before = leftovers(tmp_path)
    code, text = run_cli(["convert", src, tmp_path / "out.safetensors"], caplog)
    assert code == 2, text
    assert needle in text and "Traceback" not in text
    assert leftovers(tmp_path) == before  # no output, no temporary file


@pytest.mark.parametrize("flag", ["--dit", "--text-encoder", "--clip-vision", "--vae", "--wav2vec"])
def test_malicious_pickle_in_every_model_slot(flag, models, inputs, tmp_path, caplog):
    """Already worked before the issue (keep it so): a pickle that runs code is refused in every slot."""
    evil = _save_pickle({"model": _Evil()}, tmp_path / "evil.pth")
    out = tmp_path / "out" / "o.mp4"
    code, text = run_cli(_generate(models, inputs, out, flag, evil), caplog)
    assert code == 2, text
    assert "evil.pth" in text and "Traceback" not in text
    assert "weights_only" in text or "other than tensors" in text
    assert leftovers(tmp_path) == ["evil.pth"]


def test_convert_output_checks(tmp_path, caplog):
    src = _save_pth(_tiny_state_dict(), tmp_path / "a.pth")
    code, text = run_cli(["convert", src, tmp_path], caplog)
    assert code == 2 and f"DST '{tmp_path}' is an existing folder" in text
    code, text = run_cli(["convert", src, "/proc/anytalker-test/o.safetensors"], caplog)
    assert code == 2 and "cannot write in '/proc'" in text
    assert leftovers(tmp_path) == ["a.config.json", "a.pth"]
    # and a good conversion writes the usual permissions (0666 minus the umask), not mkstemp's 0600
    old = os.umask(0o022)
    try:
        assert main(["convert", str(src), str(tmp_path / "ok.safetensors")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ok.safetensors").stat().st_mode) == 0o644
    assert leftovers(tmp_path) == ["a.config.json", "a.pth", "ok.safetensors"]


# ------------------------------------------------------------------------- faults while generating


@pytest.fixture(scope="module")
def nan_models(models, tmp_path_factory) -> Path:
    """The tiny model set with NaN DiT weights (as a corrupt download would have)."""
    import shutil

    from anytalker_core.model.checkpoint import load_dit, save_dit

    root = tmp_path_factory.mktemp("nan_models")
    shutil.copytree(models, root, dirs_exist_ok=True)
    dit_path = next((root / "diffusion_models").glob("*.safetensors"))
    dit = load_dit(dit_path)
    with torch.no_grad():
        dit.head.head.weight.fill_(float("nan"))
    save_dit(dit, dit_path)
    return root


def test_nan_weights_stop_at_the_first_step(nan_models, inputs, tmp_path, caplog):
    code, text = run_cli(_generate(nan_models, inputs, tmp_path / "o.mp4"), caplog)
    assert code == 1
    assert "sampling step 1 of 2: the model's 'cond' prediction contains NaN or infinite values" in text
    assert "corrupt or mis-converted model file" in text and "--dtype" in text
    assert leftovers(tmp_path) == []


def test_nan_decoder_stops_before_an_all_black_video(models, inputs, tmp_path, caplog):
    """NaN in the VAE decoder: the run stops at the decode stage (it used to write a black video, exit 0)."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    root = tmp_path / "models"
    shutil.copytree(models, root)
    vae = next((root / "vae").glob("*.safetensors"))
    with safe_open(str(vae), "pt") as fh:
        metadata = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors = {k: torch.full_like(v, float("nan")) if k.startswith("decoder.") and v.is_floating_point() else v
               for k, v in tensors.items()}
    assert any(k.startswith("decoder.") for k in tensors)
    save_file(tensors, str(vae), metadata=metadata)
    out_dir = tmp_path / "out"
    code, text = run_cli(_generate(root, inputs, out_dir / "o.mp4"), caplog)
    assert code == 1
    assert "decode stage: the VAE decoder produced NaN or infinite values" in text
    assert not out_dir.exists() or leftovers(out_dir) == []


def test_unexpected_error_is_one_line_with_a_verbose_hint(models, inputs, tmp_path, caplog, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("something deep inside torch\nwith a second line")

    monkeypatch.setattr(AnyTalkerPipeline, "from_paths", classmethod(broken))
    code, text = run_cli(_generate(models, inputs, tmp_path / "o.mp4"), caplog)
    assert code == 1
    assert ("unexpected RuntimeError: something deep inside torch with a second line "
            "(run again with --verbose for the traceback)") in text
    assert "Traceback" not in text
    code, text = run_cli(_generate(models, inputs, tmp_path / "o.mp4", "--verbose"), caplog)
    assert code == 1 and "Traceback" in text and "something deep inside torch" in text
    assert leftovers(tmp_path) == []


@pytest.fixture
def sigint_default():
    """SIGINT as an interactive shell leaves it. A shell that starts pytest in the background (``cmd &``)
    sets SIGINT to SIG_IGN, and the CLI then rightly stays deaf to Ctrl-C; these tests are about Ctrl-C."""
    import signal

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_ctrl_c_exits_130_not_2(models, inputs, tmp_path, caplog, monkeypatch, sigint_default):
    """SIGINT (Ctrl-C) while the models load: exit 130 (2 is bad input), one line, nothing written."""
    import signal

    def interrupted(*_args, **_kwargs):
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(AnyTalkerPipeline, "from_paths", classmethod(interrupted))
    code, text = run_cli(_generate(models, inputs, tmp_path / "o.mp4"), caplog)
    assert code == 130
    assert "stopped by Ctrl-C (SIGINT); nothing partial was left behind" in text
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back
    assert leftovers(tmp_path) == []


def test_output_has_the_usual_permissions(models, inputs, tmp_path):
    old = os.umask(0o027)
    try:
        assert main([str(a) for a in _generate(models, inputs, tmp_path / "o.mp4")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o.mp4").stat().st_mode) == 0o640
    assert leftovers(tmp_path) == ["o.mp4"]


# ------------------------------------------------------------------------------------------ batches


def test_batch_runs_past_failing_entries_and_prints_the_summary(models, inputs, tmp_path, caplog, capsys,
                                                               monkeypatch):
    """A bad entry (2 voices, 1 face; a 180-MP image; a malformed seed) and an out-of-memory entry fail
    with one line each; the good entry is written; the summary is printed; exit 1 (a run failed)."""
    root = inputs["root"]
    Image.new("1", (13416, 13416)).save(tmp_path / "huge.png")
    batch = tmp_path / "tasks.json"
    batch.write_text(json.dumps({
        "two_voices": {"image_path": str(inputs["images"][1]), "audio_list": [str(p) for p in inputs["audio"]]},
        "huge": {"image_path": "huge.png", "audio_list": [str(inputs["audio"][0])]},
        "bad_seed": {"image_path": str(inputs["images"][1]), "audio_list": [str(inputs["audio"][0])], "seed": "x"},
        "oom": {"image_path": str(inputs["images"][1]), "audio_list": [str(inputs["audio"][0])]},
        "good": {"image_path": str(root / "people1.png"), "audio_list": [str(inputs["audio"][1])]},
    }))
    real_generate = AnyTalkerPipeline.generate

    calls = []

    def generate(self, request, **kwargs):  # memory runs out during the first entry that gets this far ('oom')
        calls.append(request)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_generate(self, request, **kwargs)

    monkeypatch.setattr(AnyTalkerPipeline, "generate", generate)
    out_dir = tmp_path / "results"
    code, text = run_cli(["generate", "--models-dir", models, "--batch", batch, "--out", out_dir, *FAST], caplog)
    printed = capsys.readouterr().out
    assert code == 1
    assert "batch: 1 generated, 0 skipped, 4 failed (two_voices, huge, bad_seed, oom)" in printed
    assert "two_voices: found 1 face but 2 audio tracks were given; add \"boxes\"" in text
    assert "huge: tasks.json['huge'].image_path" in text and "180.0 MP" in text
    assert "bad_seed: tasks.json['bad_seed'].seed: expected an integer" in text
    assert "oom: out of memory: CUDA out of memory" in text
    assert leftovers(out_dir) == ["good.mp4"]


def test_interrupted_batch_keeps_finished_clips_and_prints_the_summary(models, inputs, tmp_path, caplog, capsys,
                                                                     monkeypatch, sigint_default):
    import signal

    batch = tmp_path / "tasks.json"
    batch.write_text(json.dumps({name: {"image_path": str(inputs["images"][1]), "audio_list": [str(inputs["audio"][0])]}
                                 for name in ("first", "second", "third")}))
    real_generate = AnyTalkerPipeline.generate
    calls = []

    def generate(self, request, **kwargs):  # Ctrl-C while the second clip is generated
        calls.append(request)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return real_generate(self, request, **kwargs)

    monkeypatch.setattr(AnyTalkerPipeline, "generate", generate)
    out_dir = tmp_path / "results"
    code, text = run_cli(["generate", "--models-dir", models, "--batch", batch, "--out", out_dir, *FAST], caplog)
    assert code == 130
    assert "batch: 1 generated, 0 skipped, 0 failed [interrupted]" in capsys.readouterr().out
    assert "stopped by Ctrl-C (SIGINT)" in text
    assert leftovers(out_dir) == ["first.mp4"]  # the finished clip is kept, nothing partial


def test_reference_batch_file_layout(models, inputs, tmp_path, monkeypatch, capsys):
    """The authors' input_example/customize_your_input_here.json names files from the repository root
    ('./input_example/images/...'); run from that root, every path resolves (beside the file first)."""
    example = tmp_path / "input_example"
    (example / "images").mkdir(parents=True)
    (example / "audios").mkdir()
    Image.open(inputs["images"][1]).save(example / "images" / "1p-0.png")
    (example / "audios" / "1p-0.wav").write_bytes(inputs["audio"][0].read_bytes())
    batch = example / "customize_your_input_here.json"
    batch.write_text(json.dumps({"1p-0": {
        "image_path": "./input_example/images/1p-0.png", "caption": "A man.", "enhance_caption": "A man talks.",
        "audio_list": ["./input_example/audios/1p-0.wav"]}}, indent=4))
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "out"
    assert main(["generate", "--models-dir", str(models), "--batch", str(batch), "--out", str(out_dir), *FAST]) == 0
    assert "batch: 1 generated, 0 skipped, 0 failed" in capsys.readouterr().out
    assert leftovers(out_dir) == ["1p-0.mp4"]


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_skips_unreadable_videos(tmp_path, caplog, capsys):
    from anytalker_core.io.media import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    frames = np.repeat(demo_image(2, size=128)[None], 6, axis=0)
    write_video(videos / "good.mp4", frames, 24)
    (videos / "broken.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"\x07" * 200)
    out = tmp_path / "eval"
    code, text = run_cli(["evaluate", "--videos", videos, "--out", out, "--no-plots"], caplog)
    printed = capsys.readouterr().out
    assert code == 2  # some input was bad; the rest is scored and written
    assert "skipped video file" in text and "broken.mp4" in text
    assert "skipped 1 unreadable video(s)" in printed and "broken.mp4" in printed
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[1].startswith("good.mp4,") and rows[-1].startswith("overall,")
    assert "1 unreadable video(s) skipped" in rows[-1]
    assert len(rows) == 3


def test_evaluate_flag_checks(tmp_path, caplog):
    code, text = run_cli(["evaluate", "--videos", tmp_path / "none", "--out", tmp_path / "e"], caplog)
    assert code == 2 and f"--videos '{tmp_path / 'none'}': no such folder" in text
    code, text = run_cli(["evaluate", "--videos", tmp_path, "--out", "/proc/anytalker-test"], caplog)
    assert code == 2 and "--out '/proc/anytalker-test': cannot write in '/proc'" in text
    assert leftovers(tmp_path) == []


def test_exit_code_table_is_documented():
    """README's "Exit codes" section lists exactly the codes the guard uses."""
    from anytalker_core.cli import guard

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in (guard.EXIT_OK, guard.EXIT_FAILED, guard.EXIT_BAD_INPUT, guard.EXIT_INTERRUPTED):
        assert f"| {code} |" in section
