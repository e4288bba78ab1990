"""Long clips in overlapping windows on the tiny random models (CPU): how each window is conditioned (spied
stage by stage), colour matching, the y-conditioning and re-anchoring variants, resuming a killed run, the
atomic output and the CLI end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anytalker_core.testing.speech import espeak_available, synthesize_speech
from anytalker_core.testing.demo import build_demo_models, demo_image
from anytalker_core.errors import InputError, Interrupted
from anytalker_core.generation.colour import lab_stats, match_colour
from anytalker_core.generation.window_plan import LongClipOptions, assemble, plan_windows

AREA = 64 * 96
BOX = [[30, 20, 66, 60]]
needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is needed for real speech")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models are dominated by per-op overhead: one thread is many times faster on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return root, build_demo_models(root)


@pytest.fixture(scope="module")
def pipe(models):
    from anytalker_core.generation.pipeline import AnyTalkerPipeline

    return AnyTalkerPipeline.from_paths(models[1], face_backend="mediapipe")


@pytest.fixture(scope="module")
def speech():
    return [synthesize_speech("Hello there, how are you? I am fine, thank you, and you look well.", voice="en-us")]


def request(speech, **kw):
    from anytalker_core.generation.pipeline import GenerationRequest

    base = dict(image=demo_image(1, size=96), audio=speech, prompt="an astronaut talks", steps=2, seed=5,
                max_area=AREA, boxes=BOX, frame_num=33, window_frames=13)
    return GenerationRequest(**{**base, **kw})


class Spy:
    """Records what each stage got and gave."""

    def __init__(self, pipe, monkeypatch):
        self.denoised, self.decoded, self.latents, self.encoded = [], [], [], []
        denoise, decode, encode = pipe.denoise, pipe.decode, pipe.encode_frames

        def spy_denoise(condition, **kw):
            self.denoised.append((condition, kw["seed"], kw.get("known")))
            return denoise(condition, **kw)

        def spy_decode(latent):
            self.latents.append(latent.clone())
            self.decoded.append(decode(latent))
            return self.decoded[-1]

        def spy_encode(frames, num_frames):
            self.encoded.append((np.array(frames), num_frames))
            return encode(frames, num_frames)

        monkeypatch.setattr(pipe, "denoise", spy_denoise)
        monkeypatch.setattr(pipe, "decode", spy_decode)
        monkeypatch.setattr(pipe, "encode_frames", spy_encode)


@needs_espeak
def test_windows_condition_on_the_previous_motion_frames(pipe, speech, monkeypatch):
    from anytalker_core.audio.windowed import WindowedFeatures

    spy = Spy(pipe, monkeypatch)
    spans, span = [], WindowedFeatures.span

    def spy_span(self, start=0, end=None):
        out = span(self, start, end)
        spans.append(int(out.shape[1]))
        return out

    monkeypatch.setattr(WindowedFeatures, "span", spy_span)
    updates = []
    result = pipe.generate(request(speech), progress=lambda d, t: updates.append((d, t)))
    assert spans and max(spans) <= 13  # the windowed audio stack is built for one window at a time, never all 33
    monkeypatch.setattr(WindowedFeatures, "span", span)
    windows = plan_windows(33, 13, 5)  # (0, 13), (8, 13), (16, 13), (24, 9)
    assert result.frames.shape[0] == 33 and result.audio.numel() == round(33 / 24 * 16000)
    assert [(c.plan.frame_num, seed) for c, seed, _ in spy.denoised] == [(13, 5), (13, 6), (13, 7), (9, 8)]
    assert updates == [(i, 8) for i in range(1, 9)]  # 4 windows x 2 steps

    start = spy.denoised[0][0]
    reference = lab_stats(_start_at_video_size())  # the colour reference: the start image at the video size
    matched = [match_colour(f, reference) for f in spy.decoded]
    np.testing.assert_array_equal(result.frames, assemble(windows, matched, "blend"))
    audio = pipe.prepare_audio(speech, frame_num=33).features
    for k, (condition, _, known) in enumerate(spy.denoised):
        w = windows[k]
        torch.testing.assert_close(condition.speakers[0].audio[0], audio[0, w.start:w.end])  # its own span
        torch.testing.assert_close(condition.speakers[0].face_clip, start.speakers[0].face_clip)  # start's identity
        torch.testing.assert_close(condition.clip_fea, start.clip_fea)
        torch.testing.assert_close(condition.y[:, :4], start.y[:, :4, :w.latent_frames])
        if k == 0:
            assert known is None
            continue
        tail = matched[k - 1][-5:]  # the previous window's colour-matched last 5 frames
        motion = [e for e in spy.encoded if e[1] == 5]
        np.testing.assert_array_equal(motion[k - 1][0], tail)
        torch.testing.assert_close(known.values, _encode(pipe, tail, 5))
        assert known.first == 0 and known.values.shape[2] == 2
        torch.testing.assert_close(condition.y[:, 4:], _encode(pipe, tail[:1], w.length))  # first frame + zeros
        torch.testing.assert_close(spy.latents[k][:, :, :2], known.values.to(spy.latents[k]))  # pinned exactly


def _start_at_video_size():
    import cv2

    return cv2.resize(demo_image(1, size=96), (64, 64), interpolation=cv2.INTER_AREA)


def _encode(pipe, frames, num_frames):
    from anytalker_core.generation.pipeline import AnyTalkerPipeline

    return AnyTalkerPipeline.encode_frames(pipe, frames, num_frames)


@needs_espeak
def test_no_colour_match_and_drop(pipe, speech, monkeypatch):
    spy = Spy(pipe, monkeypatch)
    options = LongClipOptions(colour_match=False, merge="drop")
    result = pipe.generate(request(speech, long_clip=options))
    np.testing.assert_array_equal(result.frames, assemble(plan_windows(33, 13, 5), spy.decoded, "drop"))
    np.testing.assert_array_equal(spy.encoded[0][0], spy.decoded[0][-5:])  # raw decoded motion frames


@needs_espeak
def test_y_mode_and_reanchoring(pipe, speech, monkeypatch):
    spy = Spy(pipe, monkeypatch)
    pipe.generate(request(speech, long_clip=LongClipOptions(overlap_mode="y", colour_match=False)))
    start = spy.denoised[0][0]
    for k, (condition, _, known) in enumerate(spy.denoised[1:], start=1):
        assert known is None
        assert torch.all(condition.y[:, :4, :2] == 1)  # the motion frames' latent frames marked known
        torch.testing.assert_close(condition.y[:, :4, 2:], start.y[:, :4, 2:condition.plan.latent_frames])
        torch.testing.assert_close(condition.y[:, 4:], _encode(pipe, spy.decoded[k - 1][-5:], condition.plan.frame_num))

    spy = Spy(pipe, monkeypatch)
    pipe.generate(request(speech, long_clip=LongClipOptions(reanchor_every=2, colour_match=False)))
    start = spy.denoised[0][0]
    anchored, _, known = spy.denoised[2]  # window 2: y and CLIP tokens from the start image again
    torch.testing.assert_close(anchored.y, start.y[:, :, :anchored.plan.latent_frames])
    assert known.first == 1 and known.values.shape[2] == 1  # motion still pinned after latent frame 0
    assert not torch.allclose(spy.denoised[1][0].y[:, 4:], start.y[:, 4:])  # window 1: previous frames


@needs_espeak
def test_bad_long_clip_options_name_the_option(pipe, speech):
    with pytest.raises(InputError, match="overlap_frames 9 is more than half of a 13-frame window"):
        pipe.generate(request(speech, long_clip=LongClipOptions(overlap_frames=9)))
    with pytest.raises(InputError, match="overlap_mode 'frames'"):
        pipe.generate(request(speech, long_clip=LongClipOptions(overlap_mode="frames")))


@needs_espeak
def test_killed_after_window_5_resumes_with_the_finished_windows(pipe, speech, tmp_path, monkeypatch):
    from anytalker_core.cli.generate import generate_to_file
    from anytalker_core.io.media import read_video

    long = request(speech, frame_num=61)  # 7 windows of 13 frames, stride 8
    reference = pipe.generate(long).frames  # uninterrupted, in memory

    work, out = tmp_path / "work", tmp_path / "clip.mp4"
    saved = lambda: len(list(work.glob("*/window_*.npz")))  # noqa: E731

    def kill_after_5():
        if saved() == 5:
            raise KeyboardInterrupt  # what Ctrl-C / SIGTERM turn into
        return False

    with pytest.raises(KeyboardInterrupt):
        generate_to_file(pipe, long, out, should_stop=kill_after_5, work_dir=work)
    assert saved() == 5 and not out.exists() and [p.name for p in tmp_path.iterdir()] == ["work"]

    spy = Spy(pipe, monkeypatch)
    chunks = []
    result = pipe.generate(long, frame_sink=chunks.append, work_dir=work)
    assert [seed for _, seed, _ in spy.denoised] == [10, 11]  # only windows 6 and 7 are generated
    assert result.frames is None and result.num_frames == 61
    np.testing.assert_array_equal(np.concatenate(chunks), reference)  # same clip as without the kill

    # through the file writer: resumes, writes the clip atomically, removes the work folder
    spy = Spy(pipe, monkeypatch)
    generate_to_file(pipe, long, out, work_dir=work)  # the folder still holds all 7 windows
    assert spy.denoised == [] and not work.exists()
    clip = read_video(out)
    assert clip.num_frames == 61 and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


@needs_espeak
def test_other_inputs_do_not_reuse_finished_windows(pipe, speech, tmp_path, monkeypatch):
    work = tmp_path / "work"
    pipe.generate(request(speech), work_dir=work)
    spy = Spy(pipe, monkeypatch)
    pipe.generate(request(speech, seed=6), work_dir=work)
    assert len(spy.denoised) == 4 and len(list(work.iterdir())) == 2  # a new key, a new folder


@needs_espeak
def test_interrupt_writes_no_clip(pipe, speech, tmp_path, monkeypatch):
    from anytalker_core.cli.generate import generate_to_file

    spy = Spy(pipe, monkeypatch)
    out = tmp_path / "long.mp4"
    with pytest.raises(Interrupted):
        generate_to_file(pipe, request(speech), out, should_stop=lambda: len(spy.denoised) == 2,
                         work_dir=tmp_path / "w")
    assert len(spy.decoded) == 1 and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["w"]  # no temporary mp4 left, window 1 kept for a re-run


@needs_espeak
def test_window_frames_0_is_one_pass(pipe, speech, monkeypatch):
    single = pipe.generate(request(speech, frame_num=13, window_frames=0))
    for window in (13, 81):  # a clip no longer than the window: one pass, the same video
        np.testing.assert_array_equal(pipe.generate(request(speech, frame_num=13, window_frames=window)).frames,
                                      single.frames)
    spy = Spy(pipe, monkeypatch)
    assert pipe.generate(request(speech, window_frames=0)).frames.shape[0] == 33
    assert [c.plan.frame_num for c, _, _ in spy.denoised] == [33]
    with pytest.raises(InputError, match="window_frames"):
        pipe.generate(request(speech, window_frames=10))


# ----------------------------------------------------------------------------------------------- CLI


@needs_espeak
def test_cli_long_clip(models, tmp_path, caplog):
    from PIL import Image

    from anytalker_core.cli import main
    from anytalker_core.io.media import read_video

    image, wav, out = tmp_path / "one.png", tmp_path / "speech.wav", tmp_path / "long.mp4"
    Image.fromarray(demo_image(1, size=96)).save(image)
    synthesize_speech("Hello there, how are you?", wav, voice="en-us")
    argv = ["generate", "--models-dir", str(models[0]), "--image", str(image), "--audio", str(wav), "--boxes",
            "30,20,66,60", "--steps", "1", "--max-area", str(AREA), "--frame-num", "25", "--window-frames", "13",
            "--overlap-frames", "5", "--out", str(out)]
    with caplog.at_level("INFO"):
        assert main(argv) == 0
    assert "25 frames in 3 window(s) of up to 13 frames, overlap 5 (latent, blend), colour match on" in caplog.text
    clip = read_video(out)
    assert clip.num_frames == 25 and clip.fps == pytest.approx(24)
    assert clip.audio.shape[-1] / clip.sample_rate == pytest.approx(25 / 24, abs=0.03)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4", "one.png", "speech.wav"]  # work folder gone
    caplog.clear()
    assert main([*argv[:-2], "--overlap-frames", "9", "--out", str(out)]) == 2
    assert "--overlap-frames 9 is more than half of a 13-frame window: use at most 5" in caplog.text


@needs_espeak
@pytest.mark.slow
def test_cli_sixty_second_two_person_conversation(models, tmp_path, caplog):
    """60 s, two people taking turns, the default windows (81 frames, 9 motion frames): 20 windows."""
    import soundfile as sf
    from PIL import Image

    from anytalker_core.cli import main
    from anytalker_core.io.media import read_video
    from anytalker_core.testing.conversation import synthesize_conversation

    tracks = synthesize_conversation(60.1)
    for i, track in enumerate(tracks):
        sf.write(tmp_path / f"person{i + 1}.wav", track.numpy(), 16000)
    Image.fromarray(demo_image(2, size=32)).save(tmp_path / "two.png")
    out = tmp_path / "talk.mp4"
    argv = ["generate", "--models-dir", str(models[0]), "--image", str(tmp_path / "two.png"),
            "--audio", str(tmp_path / "person1.wav"), "--audio", str(tmp_path / "person2.wav"),
            "--boxes", "9,6,23,20;41,6,55,20", "--steps", "1", "--max-area", str(32 * 64), "--out", str(out)]
    with caplog.at_level("INFO"):
        assert main(argv) == 0
    assert "1441 frames in 20 window(s) of up to 81 frames, overlap 9 (latent, blend)" in caplog.text
    assert "window 20/20: frames 1368-1440" in caplog.text
    clip = read_video(out)
    assert clip.num_frames == 1441 and clip.frames.shape[1:3] == (32, 64)  # exactly the audio's frame count
    assert clip.audio.shape[-1] / clip.sample_rate == pytest.approx(1441 / 24, abs=0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["person1.wav", "person2.wav", "talk.mp4", "two.png"]


def test_later_windows_encode_their_first_frame_as_the_first_window(pipe):
    """A window's first frame + zeros goes through the same single-buffer encode as the first window's
    condition (stages.encode_frames vs encode_first_frame_condition): equal bit for bit."""
    import torch

    from anytalker_core.encoders.vae import encode_first_frame_condition
    from anytalker_core.generation import stages

    frame = demo_image(1, size=64)
    image = torch.from_numpy(frame).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
    with torch.no_grad():
        expected = encode_first_frame_condition(pipe.vae, image, 13)
    got = stages.encode_frames(pipe.vae, frame[None], 13)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_vae_decode_into_one_buffer_equals_diffusers_decode(pipe):
    """Each window's decode writes the frames into one buffer (no torch.cat per latent frame): the values
    are diffusers' AutoencoderKLWan.decode's, bit for bit."""
    vae = pipe.vae
    latent = torch.randn(1, 16, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    z = latent / vae.latents_inv_std + vae.latents_mean
    with torch.inference_mode():
        expected = vae.model.decode(z).sample.float().clamp_(-1.0, 1.0)
    torch.testing.assert_close(vae.decode(latent), expected, atol=0, rtol=0)
