"""Long videos in chained windows: the window plan, the orchestration (spied stage by stage), the CLI end to end,
interruption, and ``window_frames = 0`` (one pass). Tiny random models on the CPU."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from anytalker_core.testing.speech import espeak_available, synthesize_speech
from anytalker_core.testing.demo import build_demo_models, demo_image
from anytalker_core.errors import InputError, Interrupted
from anytalker_core.generation.windows import Window, check_window_frames, needs_windows, plan_windows, stitch

AREA = 64 * 96
needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is needed for real speech")


# ------------------------------------------------------------------------------------------ planning


@pytest.mark.parametrize("window", [5, 9, 13, 17, 21, 33, 81])
def test_plan_covers_the_clip_with_shared_frames(window):
    for total in range(1, 402, 4):
        windows = plan_windows(total, window)
        assert windows[0].start == 0 and windows[-1].end == total
        if total <= window:
            assert windows == [Window(0, 0, total)]
            continue
        assert len(windows) == math.ceil((total - 1) / (window - 1))
        for k, w in enumerate(windows):
            assert w.index == k and w.start == k * (window - 1)
            assert (w.length - 1) % 4 == 0 and 5 <= w.length <= window  # 4j+1, never a lone frame
            assert w.start % 4 == 0
        assert all(w.length == window for w in windows[:-1])
        for prev, nxt in zip(windows, windows[1:]):
            assert nxt.start == prev.end - 1  # exactly one shared frame
        # stitched: window 0 whole, then each later window without its first frame -> every frame once
        covered = list(range(windows[0].end)) + [f for w in windows[1:] for f in range(w.start + 1, w.end)]
        assert covered == list(range(total))


def test_plan_examples():
    assert plan_windows(25, 9) == [Window(0, 0, 9), Window(1, 8, 9), Window(2, 16, 9)]
    # (T - 1) a multiple of (W - 1): the last window ends exactly at the last frame, no 1-frame window
    assert plan_windows(17, 9) == [Window(0, 0, 9), Window(1, 8, 9)]
    assert plan_windows(29, 9)[-1] == Window(3, 24, 5)
    assert plan_windows(161, 81) == [Window(0, 0, 81), Window(1, 80, 81)]
    assert plan_windows(165, 81)[-1] == Window(2, 160, 5)
    assert plan_windows(9, 9) == [Window(0, 0, 9)] and plan_windows(401, 0) == [Window(0, 0, 401)]
    assert needs_windows(85, 81) and not needs_windows(81, 81) and not needs_windows(401, 0)


@pytest.mark.parametrize("bad", [1, 3, 4, 7, 80, -1, 2.5, True])
def test_window_length_must_be_4m_plus_1(bad):
    with pytest.raises(InputError, match="window_frames"):
        check_window_frames(bad)


def test_clip_length_must_be_4n_plus_1():
    with pytest.raises(InputError, match="4n\\+1"):
        plan_windows(24, 9)


def test_stitch_drops_the_shared_frame():
    a, b = np.arange(9)[:, None, None, None], np.arange(8, 13)[:, None, None, None]
    assert stitch([a, b])[:, 0, 0, 0].tolist() == list(range(13))


# ------------------------------------------------------------------------------------ orchestration


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A ComfyUI-style models folder with the tiny random model set, and its resolved paths."""
    root = tmp_path_factory.mktemp("models")
    return root, build_demo_models(root)


@pytest.fixture(scope="module")
def pipe(models):
    from anytalker_core.generation.pipeline import AnyTalkerPipeline

    return AnyTalkerPipeline.from_paths(models[1], face_backend="mediapipe")


@pytest.fixture(scope="module")
def speech():
    return [synthesize_speech("Hello there, how are you?", voice="en-us")]  # > 25 frames at 24 fps


def request(speech, **kw):
    from anytalker_core.generation.pipeline import GenerationRequest

    base = dict(image=demo_image(1, size=96), audio=speech, prompt="an astronaut talks", steps=2, seed=5,
                max_area=AREA, boxes=[[30, 20, 66, 60]], frame_num=25, window_frames=9)
    return GenerationRequest(**{**base, **kw})


class Spy:
    """Records the conditions denoised, the frames each window decoded and the frames first-frame-encoded."""

    def __init__(self, pipe, monkeypatch):
        self.denoised, self.decoded, self.first_frames = [], [], []
        from anytalker_core.generation import stages

        denoise, decode, encode_first = pipe.denoise, pipe.decode, stages.encode_first_frame

        def spy_denoise(condition, **kw):
            self.denoised.append((condition, kw["seed"]))
            return denoise(condition, **kw)

        def spy_decode(latent):
            self.decoded.append(decode(latent))
            return self.decoded[-1]

        def spy_encode_first(clip_vision, vae, image, plan, placement):
            self.first_frames.append(np.array(image))
            return encode_first(clip_vision, vae, image, plan, placement)

        monkeypatch.setattr(pipe, "denoise", spy_denoise)
        monkeypatch.setattr(pipe, "decode", spy_decode)
        monkeypatch.setattr(stages, "encode_first_frame", spy_encode_first)


@needs_espeak
def test_windows_chain_on_the_previous_last_frame(pipe, speech, monkeypatch):
    from anytalker_core.encoders import encode_first_frame_condition

    spy = Spy(pipe, monkeypatch)
    updates = []
    result = pipe.generate(request(speech), progress=lambda d, t: updates.append((d, t)))
    assert result.frames.shape[0] == 25 and result.audio.numel() == round(25 / 24 * 16000)
    assert [(c.plan.frame_num, seed) for c, seed in spy.denoised] == [(9, 5), (9, 6), (9, 7)]  # seed + k
    assert updates == [(i, 6) for i in range(1, 7)]  # 3 windows x 2 steps
    np.testing.assert_array_equal(result.frames, stitch(spy.decoded))
    np.testing.assert_array_equal(result.frames[8], spy.decoded[0][-1])  # the shared frame: window 0's last
    # first frames encoded: the user's image (whole timeline), then window k-1's last decoded frame
    assert len(spy.first_frames) == 3
    for k in (1, 2):
        frame = spy.decoded[k - 1][-1]
        np.testing.assert_array_equal(spy.first_frames[k], frame)
        condition = spy.denoised[k][0]
        torch.testing.assert_close(condition.clip_fea, pipe.clip_vision.encode(torch.from_numpy(frame)[None]))
        first = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 127.5 - 1
        torch.testing.assert_close(condition.y[:, 4:], encode_first_frame_condition(pipe.vae, first, 9))
    # audio: the window's slice of the whole timeline; faces: those of the image
    full = spy.denoised[0][0]
    audio = pipe.prepare_audio(speech, frame_num=25)
    for k, (condition, _) in enumerate(spy.denoised):
        torch.testing.assert_close(condition.speakers[0].audio[0], audio.features[0, 8 * k:8 * k + 9])
        torch.testing.assert_close(condition.speakers[0].face_clip, full.speakers[0].face_clip)
        torch.testing.assert_close(condition.y[:, :4], full.y[:, :4])


@needs_espeak
def test_first_window_equals_a_condition_built_for_its_length(pipe, speech):
    """Window 0 is sliced from the whole-timeline condition: equal to building it for 9 frames (causal VAE)."""
    image = demo_image(1, size=96)
    audio = pipe.prepare_audio(speech, frame_num=25)
    prompts = pipe.encode_prompts("an astronaut talks")
    full_plan, plan = pipe.plan(image.shape[:2], 25, AREA), pipe.plan(image.shape[:2], 9, AREA)
    boxes = [[30, 20, 66, 60]]
    full = pipe.build_condition(image, pipe.prepare_faces(image, 1, full_plan, boxes=boxes), audio, full_plan, prompts)
    short = pipe.build_condition(image, pipe.prepare_faces(image, 1, plan, boxes=boxes),
                                 SimpleNamespace(features=audio.features[:, :9]), plan, prompts)
    window = full.window(0, 9)
    assert window.plan == plan
    torch.testing.assert_close(window.y, short.y)
    torch.testing.assert_close(window.clip_fea, short.clip_fea)
    torch.testing.assert_close(window.speakers[0].token_mask, short.speakers[0].token_mask)
    torch.testing.assert_close(window.speakers[0].audio, short.speakers[0].audio)
    with pytest.raises(InputError, match="4j\\+1"):
        full.window(4, 8)
    with pytest.raises(InputError, match="inside the 25-frame clip"):
        full.window(24, 5)


@needs_espeak
def test_interrupt_in_a_later_window_writes_nothing(pipe, speech, tmp_path, monkeypatch):
    from anytalker_core.cli.generate import generate_to_file

    spy = Spy(pipe, monkeypatch)

    def stop():  # True once the second window's sampling has begun
        return len(spy.denoised) == 2

    out = tmp_path / "long.mp4"
    with pytest.raises(Interrupted):
        generate_to_file(pipe, request(speech), out, should_stop=stop)
    assert len(spy.decoded) == 1 and len(spy.denoised) == 2  # stopped inside window 1 (the second)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@needs_espeak
def test_window_frames_0_is_one_pass(pipe, speech, monkeypatch):
    single = pipe.generate(request(speech, frame_num=9, window_frames=0))
    for window in (9, 81):  # a clip no longer than the window: one pass, the same video
        np.testing.assert_array_equal(pipe.generate(request(speech, frame_num=9, window_frames=window)).frames,
                                      single.frames)
    spy = Spy(pipe, monkeypatch)
    assert pipe.generate(request(speech, window_frames=0)).frames.shape[0] == 25
    assert [c.plan.frame_num for c, _ in spy.denoised] == [25]
    with pytest.raises(InputError, match="window_frames"):
        pipe.generate(request(speech, window_frames=10))


# ----------------------------------------------------------------------------------------------- CLI


@needs_espeak
@pytest.mark.slow
def test_cli_long_clip(models, tmp_path, caplog):
    from PIL import Image

    from anytalker_core.cli import main
    from anytalker_core.io.media import read_video

    image, wav, out = tmp_path / "one.png", tmp_path / "speech.wav", tmp_path / "long.mp4"
    Image.fromarray(demo_image(1, size=96)).save(image)
    synthesize_speech("Hello there, how are you?", wav, voice="en-us")
    argv = ["generate", "--models-dir", str(models[0]), "--image", str(image), "--audio", str(wav), "--boxes", "30,20,66,60", "--steps", "1", "--max-area", str(AREA),
            "--frame-num", "25", "--window-frames", "9", "--out", str(out)]
    with caplog.at_level("INFO"):
        assert main(argv) == 0
    assert "25 frames in 3 window(s)" in caplog.text
    clip = read_video(out)
    assert clip.num_frames == 25 and clip.fps == pytest.approx(24)
    assert clip.audio.shape[-1] / clip.sample_rate == pytest.approx(25 / 24, abs=0.03)
    caplog.clear()
    assert main([*argv[:-4], "--window-frames", "10", "--out", str(out)]) == 2
    assert "--window-frames must be 4m+1" in caplog.text
