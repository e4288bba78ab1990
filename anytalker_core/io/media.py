"""Audio and video file I/O with PyAV: decode any audio to 16 kHz mono, read and write mp4.

* :func:`load_audio` — wav/mp3/flac/m4a/ogg/mp4/... → ``[S]`` float32 mono at the requested rate.
  Channels are averaged (like ``librosa.load(mono=True)``) and the rate is converted with soxr
  (``soxr_hq``, the resampler ``librosa.load(sr=16000)`` uses, so results match the reference).
* :func:`read_video` — frames ``uint8 [T, H, W, 3]`` RGB, fps and the audio track (if any).
* :func:`write_video` — H.264 (libx264, yuv420p) mp4 with an optional AAC track, written to a
  temporary file in the destination folder and renamed into place, so a crash never leaves a
  half-written mp4 under the requested name.

PyAV (``av``) is imported inside the functions so that ``import anytalker_core.media`` stays light.
"""

from __future__ import annotations

import errno
import logging
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constants import SAMPLE_RATE
from ..errors import InputError, OutputLocationError
from .atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["VideoClip", "load_audio", "load_audio_native", "read_video", "write_video", "resample", "check_sample_rate"]


def check_sample_rate(sample_rate: Any, what: str = "sample_rate") -> int:
    """Return ``sample_rate`` as a positive int, or raise :class:`InputError` naming ``what``."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer, float)):
        raise InputError(f"{what} must be a positive integer number of samples per second, got {sample_rate!r}")
    if isinstance(sample_rate, float) and not sample_rate.is_integer():
        raise InputError(f"{what} must be a whole number of samples per second, got {sample_rate!r}")
    rate = int(sample_rate)
    if rate <= 0 or rate > 1_000_000:
        raise InputError(f"{what} must be between 1 and 1000000 Hz, got {sample_rate!r}")
    return rate


def resample(wave: np.ndarray | torch.Tensor, orig_rate: int, target_rate: int) -> torch.Tensor:
    """Resample a mono waveform ``[S]`` with soxr (``soxr_hq``, as ``librosa.load`` does).

    Returns a float32 ``[S']`` tensor; identical rates return the input unchanged (as float32).
    """
    orig_rate = check_sample_rate(orig_rate, "orig_rate")
    target_rate = check_sample_rate(target_rate, "target_rate")
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise InputError(f"resample expects a mono waveform [S], got shape {tuple(wave.shape)}")
    if orig_rate != target_rate and wave.size:
        import soxr

        wave = soxr.resample(wave, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(wave))


def _open_input(path: str | Path, what: str):
    """Open a media file for reading; clear errors for missing/unreadable files."""
    import av

    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} '{path}': no such file")
    if path.is_dir():
        raise InputError(f"{what} '{path}': is a folder, expected a media file")
    if path.stat().st_size == 0:
        raise InputError(f"{what} '{path}': the file is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"{what} '{path}': unsupported or corrupt file ({exc}); expected an audio/video file "
            "such as wav, mp3, flac, m4a, ogg or mp4"
        ) from None


def _decode_audio_stream(container, path: Path, what: str) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to float32 ``[channels, S]`` at its native rate."""
    import av

    streams = container.streams.audio
    if not streams:
        raise InputError(f"{what} '{path}': the file has no audio stream (unsupported file? expected audio such "
                         "as wav, mp3, flac, m4a or a video with sound)")
    stream = streams[0]
    # Convert every frame to planar float at its own layout/rate (no rate change here).
    converter = av.AudioResampler(format="fltp")
    chunks: list[np.ndarray] = []
    rate = stream.codec_context.sample_rate or stream.rate
    try:
        for frame in container.decode(stream):
            rate = frame.sample_rate or rate
            for out in converter.resample(frame):
                chunks.append(out.to_ndarray())
        for out in converter.resample(None):
            chunks.append(out.to_ndarray())
    except av.error.FFmpegError as exc:
        raise InputError(f"{what} '{path}': could not decode the audio ({exc})") from None
    if not chunks:
        raise InputError(f"{what} '{path}': the audio stream contains no samples (empty audio)")
    channels = max(c.shape[0] for c in chunks)
    # a layout change mid-stream is rare; fold such chunks to mono-broadcast so shapes agree
    chunks = [c if c.shape[0] == channels else np.repeat(c.mean(0, keepdims=True), channels, 0) for c in chunks]
    wave = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    # AAC and MP3 encoders pad the last frame; the container's stream duration (when declared)
    # says how many samples are real (FFmpeg already drops the encoder-delay priming samples).
    if stream.duration and stream.time_base and rate:
        declared = int(round(float(stream.duration * stream.time_base) * rate))
        if 0 < declared < wave.shape[1]:
            wave = wave[:, :declared]
    if wave.shape[1] == 0:
        raise InputError(f"{what} '{path}': the audio stream contains no samples (empty audio)")
    if not rate:
        raise InputError(f"{what} '{path}': the audio stream does not declare a sample rate")
    return wave, int(rate)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode an audio (or video) file to a mono float32 waveform at ``sample_rate``.

    Any format FFmpeg reads (wav, mp3, flac, m4a/aac, ogg, mp4, ...). Multi-channel audio is
    averaged to mono, then resampled with soxr ``HQ`` (what ``librosa.load`` uses).

    Returns:
        ``[S]`` float32 tensor, values nominally in [-1, 1].
    Raises:
        InputError: missing, empty, unsupported or audio-less file; bad ``sample_rate``.
    """
    sample_rate = check_sample_rate(sample_rate)
    path = Path(path)
    with _open_input(path, "audio file") as container:
        wave, native_rate = _decode_audio_stream(container, path, "audio file")
    mono = wave.mean(axis=0) if wave.shape[0] > 1 else wave[0]
    out = resample(mono, native_rate, sample_rate)
    log.debug("loaded %s: %d ch @ %d Hz -> %d samples @ %d Hz", path, wave.shape[0], native_rate,
              out.numel(), sample_rate)
    return out


def load_audio_native(path: str | Path, what: str = "audio file") -> tuple[np.ndarray, int]:
    """Decode an audio (or video) file as it is: ``([channels, S] float32, sample rate)``, no mixing or resampling."""
    path = Path(path)
    with _open_input(path, what) as container:
        return _decode_audio_stream(container, path, what)


@dataclass
class VideoClip:
    """A decoded video.

    Attributes:
        frames: ``uint8 [T, H, W, 3]`` RGB frames.
        fps: frames per second (float).
        audio: ``[S]`` float32 mono waveform at ``sample_rate``, or ``None`` without an audio track.
        sample_rate: rate of ``audio`` in Hz.
    """

    frames: np.ndarray
    fps: float
    audio: torch.Tensor | None
    sample_rate: int

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        """Video duration in seconds (frames / fps)."""
        return self.num_frames / self.fps if self.fps else 0.0


def read_video(path: str | Path, max_frames: int | None = None, sample_rate: int = SAMPLE_RATE) -> VideoClip:
    """Read a video file: RGB frames, fps, and its audio as mono float32 at ``sample_rate``.

    Args:
        path: any container FFmpeg reads (mp4, mov, mkv, webm, ...).
        max_frames: keep only the first ``max_frames`` frames (the audio is cut to the same duration).
        sample_rate: rate of the returned audio.
    Raises:
        InputError: missing/unsupported file, no video stream, no decodable frames.
    """
    import av

    sample_rate = check_sample_rate(sample_rate)
    if max_frames is not None and (not isinstance(max_frames, (int, np.integer)) or max_frames < 1):
        raise InputError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    path = Path(path)
    with _open_input(path, "video file") as container:
        if not container.streams.video:
            raise InputError(f"video file '{path}': the file has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        frames: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except av.error.FFmpegError as exc:
            raise InputError(f"video file '{path}': could not decode the video ({exc})") from None
        has_audio = bool(container.streams.audio)
    if not frames:
        raise InputError(f"video file '{path}': the video stream has no decodable frames")
    if fps <= 0:
        raise InputError(f"video file '{path}': the video stream does not declare a frame rate")
    audio = None
    if has_audio:
        with _open_input(path, "video file") as container:
            try:
                wave, native_rate = _decode_audio_stream(container, path, "video file")
            except InputError as exc:
                log.warning("%s; returning the video without audio", exc)
                wave = None
        if wave is not None:
            mono = wave.mean(axis=0) if wave.shape[0] > 1 else wave[0]
            audio = resample(mono, native_rate, sample_rate)
            if max_frames is not None:
                audio = audio[: int(round(len(frames) / fps * sample_rate))].clone()
    return VideoClip(frames=np.stack(frames), fps=fps, audio=audio, sample_rate=sample_rate)


def _frames_to_uint8(frames: Any) -> np.ndarray:
    """``uint8 [T,H,W,3]`` from uint8 or float-in-[0,1] frames (numpy or torch)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        if frames.dtype == torch.bfloat16 or frames.dtype == torch.float16:
            frames = frames.float()
        frames = frames.numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"write_video: frames must have shape [T, H, W, 3] (RGB), got {tuple(frames.shape)}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise InputError(f"write_video: frames are empty, shape {tuple(frames.shape)}")
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    if np.issubdtype(frames.dtype, np.floating):
        if not np.isfinite(frames).all():
            raise InputError("write_video: frames contain NaN or infinite values")
        return np.ascontiguousarray((np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    raise InputError(f"write_video: frames must be uint8 0..255 or float 0..1, got dtype {frames.dtype}")


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: replicate the last row/column when odd."""
    _, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def _fps_fraction(fps: float) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating, Fraction)):
        raise InputError(f"write_video: fps must be a positive number, got {fps!r}")
    if not np.isfinite(float(fps)) or float(fps) <= 0 or float(fps) > 1000:
        raise InputError(f"write_video: fps must be in (0, 1000], got {fps!r}")
    return Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps


def write_video(
    path: str | Path,
    frames: np.ndarray | torch.Tensor,
    fps: float,
    audio: np.ndarray | torch.Tensor | None = None,
    sample_rate: int = SAMPLE_RATE,
    crf: int = 18,
    preset: str = "medium",
) -> Path:
    """Write frames (and optional mono audio) to an H.264 + AAC mp4, atomically.

    Args:
        path: destination ``.mp4``; its folder is created if needed.
        frames: ``uint8 [T, H, W, 3]`` or float ``[T, H, W, 3]`` in 0..1, numpy or torch, RGB.
            Odd heights/widths are padded by one replicated row/column (yuv420p needs even sizes).
        fps: frames per second.
        audio: ``[S]`` mono waveform (float, nominally -1..1) at ``sample_rate``, or ``None``.
        sample_rate: rate of ``audio``.
        crf, preset: libx264 quality settings.
    Returns:
        The written path.
    """
    rgb = _frames_to_uint8(frames)
    wave = _check_wave(audio, sample_rate)
    with VideoWriter(path, fps, crf=crf, preset=preset) as writer:
        writer.write(rgb)
        return writer.finish(wave, sample_rate)


def _check_wave(audio: np.ndarray | torch.Tensor | None, sample_rate: int) -> np.ndarray | None:
    if audio is None:
        return None
    check_sample_rate(sample_rate)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().float().numpy()
    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim == 2 and 1 in wave.shape:
        wave = wave.reshape(-1)
    if wave.ndim != 1:
        raise InputError(f"write_video: audio must be a mono waveform [S], got shape {tuple(wave.shape)}")
    if wave.size == 0:
        raise InputError("write_video: audio is empty (0 samples); pass audio=None for a silent video")
    if not np.isfinite(wave).all():
        raise InputError("write_video: audio contains NaN or infinite values")
    return np.clip(wave, -1.0, 1.0)


def _encode_error(path: Path, exc: Exception) -> InputError:
    """FFmpeg's failure as the user's problem: a full disk names the place, anything else the encoder."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return OutputLocationError(f"'{path}': the disk is full; free some space and run again")
    return InputError(f"write_video '{path}': FFmpeg could not encode the video ({exc})")


class VideoWriter:
    """Stream frames into an H.264 mp4 without holding them: ``write`` chunks as they come, then ``finish``
    adds the audio and moves the file into place through :func:`~.atomic.atomic_path` (until then only
    hidden ``.NAME.*.tmp.mp4`` files exist next to it, removed on any error or interruption, and on
    ``close`` without ``finish``).

    Use as a context manager::

        with VideoWriter("out.mp4", 24) as w:
            for chunk in chunks:        # uint8 [n, H, W, 3]
                w.write(chunk)
            w.finish(audio, 16000)      # audio [S] or None
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 18, preset: str = "medium") -> None:
        self.path = Path(path)
        self.rate = _fps_fraction(fps)
        self.crf, self.preset = int(crf), preset
        self.frames = 0
        self._container = None
        self._stream = None
        self._video: Path | None = None  # the video-only stream, before the audio is added
        self._size: tuple[int, int] | None = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        """Append ``[n, H, W, 3]`` frames (uint8, or float 0..1); every chunk must have the same size."""
        import av

        rgb = _pad_even(_frames_to_uint8(frames))
        size = (rgb.shape[1], rgb.shape[2])
        try:
            if self._container is None and self._video is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # a scratch file for the video stream (never renamed: finish() copies it into the atomic file)
                with tempfile.NamedTemporaryFile(prefix=f".{self.path.name}.", suffix=".video.tmp.mp4",
                                                 dir=self.path.parent, delete=False) as scratch:
                    name = scratch.name
                self._video = Path(name)
                self._container = av.open(name, mode="w", format="mp4")
                self._stream = self._container.add_stream("libx264", rate=self.rate)
                self._stream.height, self._stream.width = size
                self._stream.pix_fmt = "yuv420p"
                self._stream.options = {"crf": str(self.crf), "preset": self.preset}
                self._size = size
            elif self._container is None:
                raise RuntimeError("write_video: write() after finish()")
            elif size != self._size:
                raise InputError(f"write_video: frames of {size[1]}x{size[0]} after frames of "
                                 f"{self._size[1]}x{self._size[0]}; every frame must have the same size")
            for image in rgb:
                self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        except av.error.FFmpegError as exc:
            self.close()
            raise _encode_error(self.path, exc) from None
        except BaseException:
            self.close()
            raise
        self.frames += rgb.shape[0]

    def finish(self, audio: np.ndarray | torch.Tensor | None = None, sample_rate: int = SAMPLE_RATE) -> Path:
        """Flush the video, add ``audio`` (mono ``[S]``) and move the mp4 into place; returns its path."""
        import av

        if self._container is None:
            raise InputError("write_video: no frames were written")
        wave = _check_wave(audio, sample_rate)
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            self._container = None
            with atomic_path(self.path, suffix=".tmp.mp4") as tmp:
                # copy the video packets and encode the audio beside them
                with av.open(str(self._video)) as src, av.open(str(tmp), mode="w", format="mp4") as dst:
                    vin = src.streams.video[0]
                    vout = dst.add_stream_from_template(vin)
                    astream = None
                    if wave is not None:
                        astream = dst.add_stream("aac", rate=sample_rate)
                        astream.layout = "mono"
                    for packet in src.demux(vin):
                        if packet.dts is None:
                            continue
                        packet.stream = vout
                        dst.mux(packet)
                    if astream is not None:
                        _encode_audio(dst, astream, wave, sample_rate)
        except av.error.FFmpegError as exc:
            raise _encode_error(self.path, exc) from None
        finally:
            self.close()
        log.info("wrote %s (%d frames @ %.3f fps%s)", self.path, self.frames, float(self.rate),
                 ", with audio" if wave is not None else "")
        return self.path

    def close(self) -> None:
        """Abandon an unfinished file and remove the temporary video (no-op after :meth:`finish`)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # already failing; the temporary file goes either way
                pass
            self._container = None
        if self._video is not None:
            self._video.unlink(missing_ok=True)
            self._video = None


def _encode_audio(container, stream, wave: np.ndarray, sample_rate: int) -> None:
    """Feed ``wave`` to the AAC encoder in codec-sized chunks."""
    import av

    frame_size = stream.codec_context.frame_size or 1024
    pts = 0
    for start in range(0, wave.shape[0], frame_size):
        chunk = wave[start:start + frame_size]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk[None, :]), format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = pts
        frame.time_base = Fraction(1, sample_rate)
        pts += chunk.shape[0]
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
