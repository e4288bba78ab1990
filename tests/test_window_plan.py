"""Long-clip arithmetic (pure functions): the overlapping window plan, audio spans, the frames each window
writes, the cross-fade and the motion-frame pinning in the sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anytalker_core.errors import InputError
from anytalker_core.generation.window_plan import (Window, assemble, blend_weights, check_overlap_frames,
                                                   check_window_frames, default_overlap, merge_overlap,
                                                   needs_windows, plan_windows, split_window)


@pytest.mark.parametrize("window,overlap", [(5, 1), (9, 1), (13, 5), (17, 5), (33, 9), (33, 13), (81, 9), (81, 37)])
def test_plan_tiles_the_clip(window, overlap):
    stride = window - overlap
    for total in range(1, 802, 4):
        windows = plan_windows(total, window, overlap)
        assert windows[0].start == 0 and windows[-1].end == total and windows[-1].is_last
        if total <= window:
            assert windows == [Window(0, 0, total, 0, total)]
            continue
        assert len(windows) == 1 + math.ceil((total - window) / stride)
        for k, w in enumerate(windows):
            assert w.index == k and w.start == k * stride and w.start % 4 == 0
            assert (w.length - 1) % 4 == 0 and w.length <= window
            assert w.length >= overlap + 4  # at least one new latent frame beyond the motion frames
            assert w.audio_span == (w.start, w.start + w.length)  # the window's own span of the timeline
            assert w.overlap == (overlap if k else 0)
            assert w.known_latent_frames == (0 if k == 0 else (overlap - 1) // 4 + 1)
            assert w.latent_frames == (w.length - 1) // 4 + 1
        assert all(w.length == window for w in windows[:-1])
        for prev, nxt in zip(windows, windows[1:]):
            assert nxt.start == prev.end - overlap == prev.next_start  # exactly M shared frames
            assert prev.tail == overlap
        # the emitted spans tile 0..T-1 exactly once -> the output has the audio's frame count
        emitted = [f for w in windows for f in range(*w.emit_span)]
        assert emitted == list(range(total))


def test_plan_examples():
    # overlap 1 is the plain chain (one shared frame)
    assert [(w.start, w.length) for w in plan_windows(25, 9, 1)] == [(0, 9), (8, 9), (16, 9)]
    # 60 s at 24 fps (1441 frames), windows of 81 overlapping by 9: stride 72, 20 windows, last one 73 frames
    windows = plan_windows(1441, 81)
    assert len(windows) == 20 and windows[1].start == 72 and windows[-1] == Window(19, 1368, 73, 9, 1441)
    assert windows[0].emit_span == (0, 72) and windows[1].emit_span == (72, 144) and windows[-1].emit_span == (1368, 1441)
    assert windows[1].known_latent_frames == 3  # 9 motion frames = latent frames 0, 1, 2
    assert plan_windows(81, 81) == [Window(0, 0, 81, 0, 81)] and plan_windows(401, 0) == [Window(0, 0, 401, 0, 401)]
    assert [(w.start, w.length) for w in plan_windows(33, 13, 5)] == [(0, 13), (8, 13), (16, 13), (24, 9)]
    assert needs_windows(85, 81) and not needs_windows(81, 81) and not needs_windows(401, 0)
    assert default_overlap(81) == 9 and default_overlap(13) == 5 and default_overlap(9) == 1 and default_overlap(5) == 1


@pytest.mark.parametrize("bad", [1, 3, 4, 7, 80, -1, 2.5, True])
def test_window_length_must_be_4m_plus_1(bad):
    with pytest.raises(InputError, match="window_frames"):
        check_window_frames(bad)


@pytest.mark.parametrize("bad,message", [(0, "4k\\+1"), (4, "4k\\+1"), (6, "4k\\+1"), (45, "at most 37"),
                                         (81, "at most 37"), (True, "integer")])
def test_overlap_must_be_4k_plus_1_and_at_most_half_a_window(bad, message):
    with pytest.raises(InputError, match=f"--overlap-frames.*{message}|--overlap-frames: expected"):
        check_overlap_frames(bad, 81, "--overlap-frames")


def test_clip_length_must_be_4n_plus_1():
    with pytest.raises(InputError, match="4n\\+1"):
        plan_windows(24, 9)


def test_blend_weights_and_merge():
    np.testing.assert_allclose(blend_weights(5), [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6], rtol=1e-6)
    tail = np.zeros((5, 2, 2, 3), np.uint8)
    head = np.full((5, 2, 2, 3), 240, np.uint8)
    assert merge_overlap(tail, head, "blend")[:, 0, 0, 0].tolist() == [40, 80, 120, 160, 200]
    assert merge_overlap(tail, head, "drop")[:, 0, 0, 0].tolist() == [0] * 5
    with pytest.raises(InputError, match="blend, drop"):
        merge_overlap(tail, head, "average")


def _window_frames(windows, offset_of=lambda k: 0):
    """Frames whose value is the clip frame index (+ a per-window offset), as decoded windows would be."""
    return [np.broadcast_to((np.arange(w.start, w.end) + offset_of(w.index))[:, None, None, None],
                            (w.length, 1, 1, 3)).astype(np.uint8) for w in windows]


@pytest.mark.parametrize("merge", ["blend", "drop"])
def test_assemble_writes_every_frame_once(merge):
    windows = plan_windows(61, 13, 5)
    out = assemble(windows, _window_frames(windows), merge)
    assert out.shape[0] == 61 and out[:, 0, 0, 0].tolist() == list(range(61))  # equal copies: no change


def test_drop_keeps_the_earlier_window_and_blend_ramps():
    windows = plan_windows(33, 13, 5)
    frames = _window_frames(windows, offset_of=lambda k: 100 * k)  # window k's copy of frame f is f + 100k
    dropped = assemble(windows, frames, "drop")[:, 0, 0, 0].astype(int)
    assert dropped[8:13].tolist() == list(range(8, 13))          # window 0's copies of the shared frames
    assert dropped[13:16].tolist() == [113, 114, 115]             # then window 1's own frames
    blended = assemble(windows, frames, "blend")[:, 0, 0, 0].astype(int)
    expected = [round(f + 100 * w) for f, w in zip(range(8, 13), blend_weights(5))]
    assert blended[8:13].tolist() == expected                     # window 1's weight rises 1/6 .. 5/6
    emitted, tail = split_window(windows[0], frames[0], None, "blend")
    assert len(emitted) == 8 and tail[:, 0, 0, 0].tolist() == list(range(8, 13))


# ------------------------------------------------------------------------ pinned motion latents


@pytest.mark.parametrize("solver", ["unipc", "dpmpp", "euler"])
def test_pinned_latent_frames_land_on_the_known_values(solver):
    from anytalker_core.generation.windows import KnownLatents, pin_known_latents
    from anytalker_core.sampling import Guidance, make_noise, make_scheduler, sample

    torch.manual_seed(0)
    known = KnownLatents(torch.randn(1, 16, 2, 3, 4), first=1)
    calls = []

    def model(latent, t, branches):  # any velocity: a fixed random field per branch
        calls.append(latent[:, :, 1:3].clone())
        return [torch.sin(latent * (i + 2)) for i, _ in enumerate(branches)]

    scheduler = make_scheduler(solver, 6, 3.0)
    noise = make_noise((1, 16, 5, 3, 4), seed=1)
    out = sample(pin_known_latents(model, known, scheduler.sigmas), noise, scheduler, Guidance(text_scale=4.5))
    torch.testing.assert_close(out[:, :, 1:3], known.values, atol=2e-4, rtol=0)
    # the frames the model sees on the way lie on the straight flow path noise -> known values
    sigma = float(scheduler.sigmas[3]) / float(scheduler.sigmas[0])
    expected = (1 - sigma) * known.values + sigma * noise[:, :, 1:3]
    torch.testing.assert_close(calls[3], expected, atol=2e-3, rtol=0)
    # the free frames are the model's own: not pinned
    assert not torch.allclose(out[:, :, 0], noise[:, :, 0])


# ------------------------------------------------------------------------------------ work folder


def test_window_store_is_atomic_keyed_and_skips_unreadable_files(tmp_path):
    from anytalker_core.generation.window_store import WindowStore, run_key

    key = run_key({"seed": 1}, [torch.ones(2, 3)])
    assert key == run_key({"seed": 1}, [torch.ones(2, 3)]) != run_key({"seed": 2}, [torch.ones(2, 3)])
    assert key != run_key({"seed": 1}, [torch.ones(2, 3).double()]) != run_key({"seed": 1}, [torch.zeros(2, 3)])
    store = WindowStore(tmp_path / "work", key, {"seed": 1})
    frames = np.random.default_rng(0).integers(0, 255, (4, 2, 2, 3), dtype=np.uint8)
    store.save(0, frames, frames[-1:])
    store.save(1, frames[:2], None)
    assert store.finished(3) == 2 and sorted(p.name for p in store.folder.iterdir()) == [
        "inputs.json", "window_0000.npz", "window_0001.npz"]  # no temporary files left
    emitted, tail = store.load(0)
    np.testing.assert_array_equal(emitted, frames)
    np.testing.assert_array_equal(tail, frames[-1:])
    assert store.load(1)[1] is None and store.load(2) is None
    (store.folder / "window_0001.npz").write_bytes(b"PK\x03\x04 truncated")  # a file cut short by a kill
    assert store.load(1) is None  # generated again
    store.remove()
    assert not (tmp_path / "work").exists()
