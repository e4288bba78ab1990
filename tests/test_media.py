"""anytalker_core.io.media: audio decoding/resampling, mp4 write → read round trips, errors."""

from __future__ import annotations

import wave as wavmod
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from anytalker_core.errors import InputError
from anytalker_core.io.media import load_audio, read_video, resample, write_video


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """16-bit PCM wav; ``samples`` is [S] or [S, channels] in -1..1."""
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    pcm = np.clip(np.round(data * 32767), -32768, 32767).astype("<i2")
    with wavmod.open(str(path), "wb") as w:
        w.setnchannels(data.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def _encode_audio(path: Path, samples: np.ndarray, rate: int, codec: str) -> Path:
    """Encode mono ``samples`` (-1..1) with PyAV's bundled FFmpeg libraries (no ffmpeg program needed)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        fmt = stream.codec_context.codec.audio_formats[0].name  # e.g. fltp (aac), s16 (flac), s32p (mp3)
        kind = {"flt": np.float32, "s16": np.int16, "s32": np.int32}[fmt.rstrip("p")]
        scale = 1.0 if kind is np.float32 else float(np.iinfo(kind).max)
        data = (np.asarray(samples, np.float64) * scale).astype(kind)[None]  # [1, S]
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, data.shape[1], frame_size):
            chunk = np.ascontiguousarray(data[:, start:start + frame_size])
            if not fmt.endswith("p"):
                chunk = chunk.reshape(1, -1)  # packed: [1, S * channels]
            frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_freq(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spec.argmax()])


def test_load_audio_resamples_and_mixes_stereo(tmp_path):
    rate = 44100
    left = _tone(440, 1.5, rate, 0.4)
    right = _tone(440, 1.5, rate, 0.2)
    path = _write_wav(tmp_path / "stereo44k.wav", np.stack([left, right], 1), rate)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert abs(wave.numel() - 24000) <= 1
    # the mono mix is the mean of the channels: amplitude (0.4 + 0.2) / 2
    peak = float(wave[2000:-2000].abs().max())
    assert abs(peak - 0.3) < 0.01, peak
    assert abs(_dominant_freq(wave.numpy(), 16000) - 440) < 2


def test_load_audio_other_target_rate_and_identity(tmp_path):
    x = _tone(300, 0.5, 16000)
    path = _write_wav(tmp_path / "m16.wav", x, 16000)
    same = load_audio(path, 16000)
    assert same.numel() == x.size
    assert np.abs(same.numpy() - x).max() < 1e-4  # 16-bit quantisation only
    up = load_audio(path, sample_rate=22050)
    assert abs(up.numel() - int(0.5 * 22050)) <= 1


@pytest.mark.parametrize("ext,codec", [("mp3", "libmp3lame"), ("flac", "flac"), ("m4a", "aac")])
def test_load_audio_compressed_formats(tmp_path, ext, codec):
    dst = _encode_audio(tmp_path / f"out.{ext}", _tone(500, 1.0, 22050), 22050, codec)
    wave = load_audio(dst)
    assert abs(wave.numel() - 16000) < 1200  # codec padding/priming at most ~one frame
    assert abs(_dominant_freq(wave.numpy(), 16000) - 500) < 3


def test_resample_function():
    x = _tone(1000, 1.0, 48000)
    y = resample(x, 48000, 16000)
    assert y.shape == (16000,) and y.dtype == torch.float32
    assert abs(_dominant_freq(y.numpy(), 16000) - 1000) < 2


def test_load_audio_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_audio(empty)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 40)
    with pytest.raises(InputError, match="unsupported or corrupt"):
        load_audio(junk)
    zero = _write_wav(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(InputError, match="no samples"):
        load_audio(zero)
    ok = _write_wav(tmp_path / "ok.wav", _tone(200, 0.1, 16000), 16000)
    for bad in (0, -16000, 16000.5, "16k", None):
        with pytest.raises(InputError, match="sample_rate"):
            load_audio(ok, sample_rate=bad)
    silent_video = tmp_path / "silent.mp4"
    write_video(silent_video, np.zeros((3, 16, 16, 3), np.uint8), 24)
    with pytest.raises(InputError, match="no audio stream"):
        load_audio(silent_video)


def test_write_read_roundtrip_with_audio(tmp_path):
    from skimage.data import astronaut
    from skimage.transform import resize

    t, h, w, fps, sr = 25, 63, 81, 24.0, 16000  # odd sizes: padded to even
    base = resize(astronaut(), (h, w), anti_aliasing=True).astype(np.float32)[None]
    frames = torch.from_numpy(np.repeat(base, t, 0) * np.linspace(0.3, 1.0, t)[:, None, None, None])
    audio = torch.from_numpy(_tone(440, t / fps, sr, 0.3))
    out = write_video(tmp_path / "sub" / "clip.mp4", frames.float(), fps, audio=audio, sample_rate=sr)
    assert out.is_file() and out.parent.name == "sub"
    assert [p.name for p in out.parent.iterdir()] == ["clip.mp4"]  # no temp file left behind
    clip = read_video(out)
    assert clip.frames.shape == (t, h + 1, w + 1, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(fps)
    assert clip.audio is not None and clip.sample_rate == sr
    assert abs(clip.audio.numel() - audio.numel()) < 0.01 * sr  # duration ≈ input (within 10 ms)
    assert abs(_dominant_freq(clip.audio.numpy(), sr) - 440) < 3
    # content survives H.264: brightness ramp preserved
    means = clip.frames.reshape(t, -1).mean(1)
    assert means[-1] > means[0] + 50
    expected = (frames[10].numpy() * 255)
    assert np.abs(clip.frames[10, :h, :w].astype(np.float32) - expected).mean() < 6
    sound = load_audio(out)  # load_audio reads a video's audio track too
    assert abs(sound.numel() - audio.numel()) < 0.01 * sr
    short = read_video(out, max_frames=6)
    assert short.frames.shape[0] == 6
    assert abs(short.audio.numel() - round(6 / fps * sr)) <= 1


def test_write_video_uint8_no_audio_ntsc_fps(tmp_path):
    frames = np.full((5, 32, 48, 3), 128, np.uint8)
    out = write_video(tmp_path / "a.mp4", frames, 30000 / 1001)
    clip = read_video(out)
    assert clip.audio is None
    assert clip.frames.shape == (5, 32, 48, 3)
    assert clip.fps == pytest.approx(29.97, abs=1e-2)


def test_write_video_errors_leave_nothing(tmp_path):
    with pytest.raises(InputError, match=r"\[T, H, W, 3\]"):
        write_video(tmp_path / "bad.mp4", np.zeros((4, 8, 8), np.uint8), 24)
    with pytest.raises(InputError, match="fps"):
        write_video(tmp_path / "bad.mp4", np.zeros((1, 8, 8, 3), np.uint8), 0)
    with pytest.raises(InputError, match="mono waveform"):
        write_video(tmp_path / "bad.mp4", np.zeros((1, 8, 8, 3), np.uint8), 24, audio=np.zeros((2, 100)))
    with pytest.raises(InputError, match="uint8 0..255 or float"):
        write_video(tmp_path / "bad.mp4", np.zeros((1, 8, 8, 3), np.int32), 24)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="no such file"):
        read_video(tmp_path / "nothing.mp4")
    audio_only = _write_wav(tmp_path / "a.wav", _tone(200, 0.1, 16000), 16000)
    with pytest.raises(InputError, match="no video stream"):
        read_video(audio_only)
