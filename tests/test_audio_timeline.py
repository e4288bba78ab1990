"""Multi-speaker assembly on real espeak-ng speech: frame counts, pad vs concat placement, mix,
speaking intervals, loudness option, resample/mixdown of a 44.1 kHz stereo file, errors."""

from __future__ import annotations

import math
import wave as wavmod

import numpy as np
import pyloudnorm
import pytest
import torch

from anytalker_core.testing.speech import espeak_available, synthesize_speech
from anytalker_core.audio.timeline import (
    build_audio_conditioning,
    check_frame_num,
    frame_num_from_audio,
    largest_4n1,
)
from anytalker_core.audio.wav2vec import load_wav2vec, video_frames_for_samples
from anytalker_core.testing.tiny_wav2vec import make_tiny_wav2vec
from anytalker_core.errors import InputError, Interrupted
from anytalker_core.io.media import resample

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")

FPS = 24


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("speech")
    a = synthesize_speech("The quick brown fox jumps over the lazy dog.", d / "a.wav", voice="en-us", speed=175)
    b = synthesize_speech("Hello there, how are you?", d / "b.wav", voice="en-us+f3", speed=160)
    assert a.numel() > b.numel() + 8000  # two speakers, clearly different lengths
    return {"a": a, "b": b, "dir": d}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_wav2vec(make_tiny_wav2vec(tmp_path_factory.mktemp("w2v") / "tiny"))


def _write_stereo_44k(path, mono16k: torch.Tensor) -> None:
    """A 44.1 kHz stereo 16-bit wav of the speech (right channel at half gain)."""
    x = resample(mono16k, 16000, 44100).numpy()
    stereo = np.stack([x, 0.5 * x], axis=1)
    pcm = np.clip(np.round(stereo * 32767), -32768, 32767).astype("<i2")
    with wavmod.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(pcm.tobytes())


def test_frame_count_helpers():
    assert [largest_4n1(n) for n in (5, 6, 8, 9, 70, 131)] == [5, 5, 5, 9, 69, 129]
    assert frame_num_from_audio([46537, 40487], 24, "pad") == 69
    assert frame_num_from_audio([46537, 40487], 24, "concat") == 129
    assert check_frame_num(33, 69, "pad", 24) == 33
    with pytest.raises(InputError, match="4n\\+1"):
        check_frame_num(32, 69, "pad", 24)
    with pytest.raises(InputError, match="exceeds the audio"):
        check_frame_num(73, 69, "pad", 24)


def test_pad_mode(speech, encoder):
    a, b = speech["a"], speech["b"]
    cond = build_audio_conditioning([a, b], mode="pad", fps=FPS, encoder=encoder)
    t_a = video_frames_for_samples(a.numel(), FPS)
    assert cond.frame_num == largest_4n1(t_a) and (cond.frame_num - 1) % 4 == 0
    assert cond.features.shape == (2, cond.frame_num, 5, 2, 64) and cond.features.dtype == torch.float32
    assert cond.track_frames == [t_a, video_frames_for_samples(b.numel(), FPS)]
    # the shorter track continues with real wav2vec output of (padded) silence, not zeros
    tail = cond.features[1, cond.track_frames[1] + 3:]
    assert tail.numel() and tail.abs().amax() > 0.1
    # mix: both tracks start at 0 and sum; exactly the video's duration
    assert cond.mixed.numel() == round(cond.frame_num / FPS * 16000)
    total = cond.mixed.numel()
    expected = torch.zeros(total)
    expected[: min(a.numel(), total)] += a[:total]
    expected[: min(b.numel(), total)] += b[:total]
    if expected.abs().max() > 0.99:  # overlapping speech is scaled down, not clipped
        expected *= 0.99 / expected.abs().max()
    torch.testing.assert_close(cond.mixed, expected, atol=1e-6, rtol=1e-5)
    assert cond.mixed.abs().max() <= 0.99 + 1e-6
    assert cond.turns[0][0] == 0 and cond.turns[1][0] == 0
    assert cond.turns[1][1] == pytest.approx(b.numel() / 16000, abs=1e-6)
    assert cond.speaking[1] and cond.speaking[1][-1][1] <= b.numel() / 16000 + 1e-6


def test_concat_mode_turn_taking(speech, encoder):
    a, b = speech["a"], speech["b"]
    cond = build_audio_conditioning([a, b], mode="concat", fps=FPS, encoder=encoder)
    t_a, t_b = cond.track_frames
    assert cond.frame_num == largest_4n1(math.ceil((a.numel() + b.numel()) / 16000 * FPS))
    f = cond.features
    assert f.shape == (2, cond.frame_num, 5, 2, 64)
    # track 1 is zero during track 0's turn, track 0 zero after it
    assert f[1, :t_a].abs().max() == 0 and f[0, t_a:].abs().max() == 0
    assert (f[1, t_a:].flatten(1).abs().amax(1) > 0).all()
    # each turn holds that track encoded alone
    torch.testing.assert_close(f[0, :t_a], encoder.features(a, t_a), atol=0, rtol=0)
    keep = cond.frame_num - t_a
    torch.testing.assert_close(f[1, t_a:], encoder.features(b, t_b)[:keep], atol=0, rtol=0)
    # mix: track 1 starts where its features start
    offset = round(t_a / FPS * 16000)
    torch.testing.assert_close(cond.mixed[:a.numel()], a, atol=0, rtol=0)
    assert cond.mixed[a.numel():offset].abs().max() == 0
    torch.testing.assert_close(cond.mixed[offset:offset + 4000], b[:4000], atol=0, rtol=0)
    assert cond.turns[1][0] == pytest.approx(t_a / FPS)
    assert all(s >= t_a / FPS - 1e-9 for s, _ in cond.speaking[1])
    assert all(e <= t_a / FPS + 1e-9 for _, e in cond.speaking[0])


def test_given_frame_num_and_progress(speech, encoder):
    calls = []
    cond = build_audio_conditioning([speech["a"], speech["b"]], mode="pad", fps=FPS, encoder=encoder,
                                    frame_num=33, progress=lambda i, n: calls.append((i, n)))
    assert cond.frame_num == 33 and cond.features.shape[1] == 33 and calls == [(1, 2), (2, 2)]
    assert cond.mixed.numel() == round(33 / FPS * 16000)
    with pytest.raises(InputError, match="form 4n\\+1"):
        build_audio_conditioning([speech["a"]], fps=FPS, encoder=encoder, frame_num=34)
    with pytest.raises(InputError, match="exceeds the audio"):
        build_audio_conditioning([speech["a"]], fps=FPS, encoder=encoder, frame_num=4 * 100 + 1)
    with pytest.raises(Interrupted):
        build_audio_conditioning([speech["a"]], fps=FPS, encoder=encoder, should_stop=lambda: True)


def test_paths_and_stereo_44k_resample(speech, encoder, tmp_path):
    stereo = tmp_path / "stereo44k.wav"
    _write_stereo_44k(stereo, speech["b"])
    from_file = build_audio_conditioning([speech["dir"] / "a.wav", stereo], mode="concat", fps=FPS, encoder=encoder)
    ref = build_audio_conditioning([speech["a"], speech["b"]], mode="concat", fps=FPS, encoder=encoder)
    assert from_file.frame_num == ref.frame_num
    # the stereo file is 0.75 * speech after mixdown; wav2vec normalisation removes the gain
    t_a = ref.track_frames[0]
    x, y = from_file.features[1, t_a:], ref.features[1, t_a:]
    corr = torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1]
    assert corr > 0.99, corr
    # waveform tracks at another rate are resampled
    b44 = resample(speech["b"], 16000, 44100)
    via_rate = build_audio_conditioning([b44], mode="pad", fps=FPS, encoder=encoder, sample_rate=44100)
    single = build_audio_conditioning([speech["b"]], mode="pad", fps=FPS, encoder=encoder)
    assert via_rate.frame_num == single.frame_num


def test_loudness_normalisation(speech, encoder):
    quiet, loud = 0.05 * speech["a"] / speech["a"].abs().max(), 0.9 * speech["b"] / speech["b"].abs().max()
    off = build_audio_conditioning([quiet, loud], mode="concat", fps=FPS, encoder=encoder)
    on = build_audio_conditioning([quiet, loud], mode="concat", fps=FPS, encoder=encoder, normalize_loudness=True)
    offset = round(on.track_frames[0] / FPS * 16000)
    meter = pyloudnorm.Meter(16000)  # BS.1770-4, measured independently of our wrapper
    lufs = lambda x: meter.integrated_loudness(x.double().numpy())  # noqa: E731
    levels_off = [lufs(off.mixed[:quiet.numel()]), lufs(off.mixed[offset:])]
    levels_on = [lufs(on.mixed[:quiet.numel()]), lufs(on.mixed[offset:])]
    assert abs(levels_off[1] - levels_off[0]) > 20  # very different before
    assert abs(levels_on[0] - levels_on[1]) < 0.5 and abs(levels_on[0] + 23) < 0.5, levels_on  # both -23 LUFS after
    custom = build_audio_conditioning([quiet], mode="pad", fps=FPS, encoder=encoder, normalize_loudness=-30.0)
    assert abs(lufs(custom.mixed[:quiet.numel()]) + 30) < 0.5
    # gain hardly changes the features (wav2vec normalises the waveform)
    assert (on.features - off.features).abs().max() < 1e-2 * off.features.abs().max()
    with pytest.raises(InputError, match="LUFS"):
        build_audio_conditioning([quiet], fps=FPS, encoder=encoder, normalize_loudness=6.0)


def test_errors(speech, encoder, tmp_path):
    a = speech["a"]
    with pytest.raises(InputError, match="audio track 2 is empty"):
        build_audio_conditioning([a, torch.zeros(0)], fps=FPS, encoder=encoder)
    with pytest.raises(InputError, match="every audio track is silent"):
        build_audio_conditioning([torch.full((32000,), 1e-6)], fps=FPS, encoder=encoder)
    with pytest.raises(InputError, match="too short"):
        build_audio_conditioning([a[:2000]], fps=FPS, encoder=encoder)  # 0.125 s = 3 frames
    junk = tmp_path / "notes.txt"
    junk.write_text("not audio " * 50)
    with pytest.raises(InputError, match="notes.txt.*(unsupported|no audio stream)"):
        build_audio_conditioning([junk], fps=FPS, encoder=encoder)
    for bad in (0, -1, 16000.5):
        with pytest.raises(InputError, match="sample_rate"):
            build_audio_conditioning([a], fps=FPS, encoder=encoder, sample_rate=bad)
    with pytest.raises(InputError, match="fps"):
        build_audio_conditioning([a], fps=0, encoder=encoder)
    with pytest.raises(InputError, match="'pad'"):
        build_audio_conditioning([a], mode="overlap", fps=FPS, encoder=encoder)
    with pytest.raises(InputError, match="no audio tracks"):
        build_audio_conditioning([], fps=FPS, encoder=encoder)
    with pytest.raises(InputError, match="single track"):
        build_audio_conditioning(a, fps=FPS, encoder=encoder)
    with pytest.raises(InputError, match="encoder"):
        build_audio_conditioning([a], fps=FPS)
    with pytest.raises(InputError, match="mono waveform"):
        build_audio_conditioning([torch.zeros(2, 16000)], fps=FPS, encoder=encoder)


def test_silent_track_is_a_listener(speech, encoder):
    """A fully silent track means "this person listens": the run goes on, that person's features are
    wav2vec2's own output for silence (as the reference's pad mode) and they have no speaking interval."""
    a = speech["a"]
    silent = torch.zeros(a.numel())
    audio = build_audio_conditioning([a, silent], mode="pad", fps=FPS, encoder=encoder)
    assert audio.num_tracks == 2 and audio.speaking[1] == [] and audio.speaking[0]
    alone = build_audio_conditioning([silent + 0.0, a], mode="pad", fps=FPS, encoder=encoder)
    assert torch.allclose(alone.features[0], audio.features[1]) and torch.allclose(alone.features[1], audio.features[0])
    assert audio.features[1].abs().sum() > 0  # real wav2vec2 output of silence, not the zeroed uncond audio
    assert torch.allclose(audio.mixed, alone.mixed)


def test_original_rate_mix(speech, encoder):
    """The video's sound keeps the users' rate and channels (48 kHz stereo in -> 48 kHz stereo out), each track
    where the conditioning put it and with the gain it applied."""
    from anytalker_core.audio.mix import mix_on_timeline

    a, b = speech["a"], speech["b"]
    a48 = resample(a, 16000, 48000)
    stereo = torch.stack([a48, 0.5 * a48])  # [2, S] at 48 kHz
    b22 = resample(b, 16000, 22050)
    for mode in ("pad", "concat"):
        audio = build_audio_conditioning([a, b], mode=mode, fps=FPS, encoder=encoder, normalize_loudness=True)
        mix, rate = mix_on_timeline([stereo, b22], [48000, 22050], [t[0] for t in audio.turns], audio.duration,
                                    gains=audio.gains)
        assert rate == 48000 and mix.shape == (2, round(audio.duration * 48000))
        # the conditioning's 16 kHz mono mix and this one (left channel = track a at full level), brought to
        # 16 kHz, have the same 20 ms loudness envelope (samples differ by the sub-sample placement of a turn
        # that starts between two 16 kHz samples, which the 48 kHz mix places exactly)
        left16 = resample(mix[0], 48000, 16000)
        n = min(left16.numel(), audio.mixed.numel()) // 320 * 320
        env = left16[:n].reshape(-1, 320).pow(2).mean(1).sqrt()
        ref = audio.mixed[:n].reshape(-1, 320).pow(2).mean(1).sqrt()
        err = (env - ref).abs().max() / ref.max()
        assert err < 0.02, (mode, float(err))
        if mode == "concat":  # during track a's turn the right channel is a at half level
            turn = int(audio.turns[0][1] * 16000) - 400
            right16 = resample(mix[1], 48000, 16000)[:turn]
            assert torch.allclose(right16, 0.5 * left16[:turn], atol=2e-3)
        assert float(mix.abs().max()) <= 0.99 + 1e-6
    with pytest.raises(InputError, match="audio input 1: 2 channels cannot be mixed with 3-channel"):
        mix_on_timeline([stereo, torch.zeros(3, 100)], [48000, 48000], [0, 0], 1.0)
