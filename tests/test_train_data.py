"""Training data path: buckets, sampler, flow-matching math, masks, two-person concatenation, dropout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from train import flow
from train.buckets import BucketBatchSampler
from train.data import (CacheIndex, CachedSample, SharedEmbeddings, Unpairable, collate, concat_side_by_side,
                        half_crop_start, identity_masks,
                        load_sample, window_audio)
from train.clip_windows import frames_for_training, resample_indices
from train.encode import write_sample
from train.trainer import apply_condition_dropout
from train.trainer_setup import lr_lambda

from anytalker_core.errors import InputError
from anytalker_core.sampling import target_size


# ----------------------------------------------------------------------------------- buckets / sampler


def _keys():
    return [(1, 3, 8, 16)] * 11 + [(1, 5, 8, 8)] * 7 + [(2, 3, 8, 16)] * 5


def test_sampler_never_mixes_shapes_and_shards_disjointly():
    keys = _keys()
    per_rank = []
    for rank in range(2):
        s = BucketBatchSampler(keys, 2, two_person_prob=0.5, pairable=lambda k: k[0] == 1, seed=3, rank=rank,
                               world_size=2)
        batches = s.batches_for_epoch(0)
        for b in batches:
            assert len({keys[i] for i in b.indices}) == 1
            assert len(b.indices) == 2  # a two-person batch holds B pairs made from its own B samples
            if b.two_person:
                assert keys[b.indices[0]][0] == 1  # only single-person buckets are paired
                assert b.partners == (b.indices[1], b.indices[0])
        per_rank.append(batches)
    assert len(per_rank[0]) == len(per_rank[1]) > 0  # equal step counts on every rank
    seen = [i for batches in per_rank for b in batches for i in b.indices]
    assert len(seen) == len(set(seen))  # no sample twice in an epoch across ranks
    assert any(b.two_person for b in per_rank[0] + per_rank[1])
    assert any(not b.two_person for b in per_rank[0] + per_rank[1])


def test_sampler_is_deterministic_and_resumes_exactly():
    keys = _keys()
    a = BucketBatchSampler(keys, 2, 0.5, lambda k: k[0] == 1, seed=5)
    it = iter(a)
    full = [next(it) for _ in range(20)]  # crosses epoch boundaries
    b = BucketBatchSampler(keys, 2, 0.5, lambda k: k[0] == 1, seed=5)
    it = iter(b)
    head = [next(it) for _ in range(7)]
    c = BucketBatchSampler(keys, 2, 0.5, lambda k: k[0] == 1, seed=5)
    c.load_state_dict({**b.state_dict(), "epoch": head[-1].epoch, "position": head[-1].position + 1})
    it = iter(c)
    tail = [next(it) for _ in range(13)]
    assert [x.indices for x in head + tail] == [x.indices for x in full]
    assert [x.two_person for x in head + tail] == [x.two_person for x in full]
    other = BucketBatchSampler(keys, 2, 0.5, lambda k: k[0] == 1, seed=6).batches_for_epoch(0)
    assert [x.indices for x in other] != [x.indices for x in a.batches_for_epoch(0)]
    # added data: this epoch's order is gone, the run continues with the next epoch
    grown = BucketBatchSampler(keys + [keys[0]], 2, 0.5, lambda k: k[0] == 1, seed=5)
    grown.load_state_dict(b.state_dict())
    assert (grown.epoch, grown.position) == (b.epoch + 1, 0)


def test_sampler_resumes_with_another_process_count():
    """The epoch's global batch order does not depend on the world size: 2 ranks at local position 3
    consumed global batches 0..5; 3 ranks continue at local position 2 (global 6..)."""
    keys = [(1, 3, 8, 16)] * 40
    two = [BucketBatchSampler(keys, 1, 0.5, lambda k: True, seed=1, rank=r, world_size=2) for r in range(2)]
    glob = two[0].epoch_batches(0)
    assert [b.indices for b in two[1].batches_for_epoch(0)] == [b.indices for b in glob[1:40:2]]
    state = {**two[0].state_dict(), "position": 3}
    three = [BucketBatchSampler(keys, 1, 0.5, lambda k: True, seed=1, rank=r, world_size=3) for r in range(3)]
    for r, s in enumerate(three):
        s.load_state_dict(state)
        assert (s.epoch, s.position) == (0, 2)
        assert next(iter(s)).indices == glob[6 + r].indices


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_stage1_pairing_is_k_with_k_plus_1_and_half_the_batches(batch_size):
    """The paper's stage 1: one coin per batch (p = 0.5 whatever B), sample k joined with sample k+1
    of the same batch (cyclic), never with a window of its own clip; B = 1 takes the next clip of the
    bucket."""
    keys = [(1, 3, 8, 16)] * 12
    sources = [f"clip{i // 2}" for i in range(12)]  # two windows per clip
    sampler = BucketBatchSampler(keys, batch_size, 0.5, lambda k: True, seed=7, sources=sources)
    batches = [b for epoch in range(300) for b in sampler.batches_for_epoch(epoch)]
    fraction = sum(b.two_person for b in batches) / len(batches)
    assert abs(fraction - 0.5) < 0.05, fraction  # 3.5 sigma for B = 4 (900 batches)
    rolled = 0
    for b in batches:
        assert len(b.indices) == batch_size
        if not b.two_person:
            assert b.partners == ()
            continue
        assert len(b.partners) == batch_size
        for k, (i, j) in enumerate(zip(b.indices, b.partners)):
            assert i != j and sources[i] != sources[j]
            others = [b.indices[(k + d) % batch_size] for d in range(1, batch_size)]
            others = [o for o in others if sources[o] != sources[i]]
            if others:  # the next sample of another clip in the same batch: k+1 unless it is the same clip
                assert j == others[0]
                rolled += j == b.indices[(k + 1) % batch_size]
            else:  # every other sample of the batch is the same clip (or B = 1): from the bucket
                assert j not in b.indices
    if batch_size > 1:
        assert rolled > 0


def test_a_bucket_of_one_clip_is_never_paired():
    sampler = BucketBatchSampler([(1, 3, 8, 16)] * 4, 2, 1.0, lambda k: True, sources=["same"] * 4)
    assert not any(b.two_person for b in sampler.batches_for_epoch(0))


def test_unpairable_samples_form_single_person_batches_only():
    keys = [(1, 3, 8, 16)] * 8
    can = [i % 4 != 0 for i in range(8)]
    sampler = BucketBatchSampler(keys, 2, 1.0, lambda k: True, can_pair=can)
    for epoch in range(20):
        for b in sampler.batches_for_epoch(epoch):
            involved = b.indices + b.partners
            assert b.two_person == all(can[i] for i in b.indices)
            assert all(can[i] for i in involved) or not b.two_person


def test_sampler_explains_too_little_data():
    with pytest.raises(InputError, match="no full batch"):
        BucketBatchSampler([(1, 3, 8, 8)] * 3, 4)


# ----------------------------------------------------------------------------------- flow matching


def test_flow_matching_math():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(1000, generator=g, dtype=torch.float64)
    assert torch.allclose(flow.shift_sigmas(u, 1.0), u)
    shifted = flow.shift_sigmas(u, 3.0)
    assert (shifted >= u).all() and shifted.mean() > u.mean() + 0.1  # shift pushes towards noise
    assert torch.allclose(flow.shift_sigmas(torch.tensor([0.5]), 3.0), torch.tensor([0.75]))
    s = flow.sample_sigmas(500, torch.Generator().manual_seed(1), "logit_normal", shift=3.0)
    assert s.dtype == torch.float32 and s.min() >= 1e-3 and s.max() <= 1.0
    x0, noise = torch.randn(2, 16, 2, 4, 4), torch.randn(2, 16, 2, 4, 4)
    sigma = torch.tensor([0.0, 1.0])
    xt = flow.add_noise(x0, noise, sigma)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], noise[1])
    # the velocity is d x_t / d sigma
    a, b = flow.add_noise(x0, noise, torch.full((2,), 0.3)), flow.add_noise(x0, noise, torch.full((2,), 0.3 + 1e-3))
    assert torch.allclose((b - a) / 1e-3, flow.flow_target(x0, noise), atol=1e-2)
    assert torch.equal(flow.sigmas_to_timesteps(torch.tensor([0.25])), torch.tensor([250.0]))
    assert flow.flow_matching_loss(noise, noise).item() == 0.0
    with pytest.raises(FloatingPointError):
        flow.flow_matching_loss(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    with pytest.raises(InputError):
        flow.sample_sigmas(2, torch.Generator(), "bogus")


def test_lr_schedule_warms_up_linearly():
    values = [lr_lambda(s, 4, 20, "constant") for s in range(8)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0] and values[4:] == [1.0] * 4
    assert lr_lambda(20, 4, 20, "cosine") == pytest.approx(0.0)
    assert lr_lambda(12, 4, 20, "linear") == pytest.approx(0.5)


def test_resize_cover_fills_the_bucket_without_distortion():
    from train.clip_windows import resize_cover

    frames = np.zeros((2, 100, 180, 3), dtype=np.uint8)
    frames[:, :, 90:] = 255  # right half white
    h, w = target_size(100, 180, max_area=96 * 160)
    out = resize_cover(frames, (h, w))
    assert out.shape == (2, h, w, 3) and out.dtype == np.uint8
    assert out[:, :, : w // 2 - 2].max() == 0 and out[:, :, w // 2 + 2:].min() == 255  # centre kept


def test_frame_rate_and_length_rules():
    assert frames_for_training(100, 81) == 81
    assert frames_for_training(80, 81) == 77
    assert frames_for_training(4, 81) == 1
    idx = resample_indices(60, 30.0, 24.0)  # 2 s at 30 fps -> 48 frames at 24 fps
    assert len(idx) == 48 and idx[0] == 0 and idx[-1] == 58 and np.all(np.diff(idx) >= 1)
    assert np.array_equal(resample_indices(10, 24.0, 24.0), np.arange(10))


# ----------------------------------------------------------------------------------- two-person concatenation

F_LAT, LAT_H, LAT_W, T, L, C, D = 3, 8, 16, 9, 2, 4, 6


def _sample(marker: float, box, sample_id: str) -> CachedSample:
    """A single-person sample whose every tensor carries ``marker`` (latent columns also encode their x;
    first-frame pixels hold the marker in red, their column in green and their row in blue)."""
    cols = torch.arange(LAT_W, dtype=torch.float32)
    lat = marker + cols.expand(16, F_LAT, LAT_H, LAT_W) / 100
    h_img, w_img = LAT_H * 8, LAT_W * 8
    frame = torch.stack([torch.full((h_img, w_img), int(marker * 50)),
                         torch.arange(w_img).expand(h_img, w_img),
                         torch.arange(h_img)[:, None].expand(h_img, w_img)], dim=-1).to(torch.uint8)
    return CachedSample(
        sample_id=sample_id, latents=lat, first_frame_latent=-lat,
        audio_features=torch.full((1, T, L, C), marker), global_face_box=torch.tensor([box], dtype=torch.float32),
        face_clip_tokens=torch.full((1, 257, D), marker), clip_tokens=torch.full((257, D), marker),
        text_embedding=torch.full((3, D), marker), image_hw=(h_img, w_img), first_frame=frame)


def test_concat_side_by_side_binds_each_half_to_its_identity():
    left = _sample(1.0, [40, 10, 80, 50], "a")  # face near the centre of a 64x128 frame
    right = _sample(2.0, [50, 12, 90, 52], "b")
    prompt = torch.full((4, D), 7.0)
    pair = concat_side_by_side(left, right, prompt)
    half = LAT_W // 2
    # latents: the half of each sample centred on its face (left: centre 60 px -> columns 4..11,
    # right: centre 70 px -> columns 5..12), left then right
    assert pair.meta["crop_columns"] == [[4, 12], [5, 13]]
    assert pair.latents.shape == left.latents.shape
    assert torch.allclose(pair.latents[..., :half], left.latents[..., 4:12])
    assert torch.allclose(pair.latents[..., half:], right.latents[..., 5:13])
    assert torch.allclose(pair.first_frame_latent[..., half:], -right.latents[..., 5:13])
    # identity 0 = left sample, identity 1 = right sample
    assert pair.audio_features[0].unique().tolist() == [1.0] and pair.audio_features[1].unique().tolist() == [2.0]
    assert pair.face_clip_tokens[0].unique().tolist() == [1.0] and pair.face_clip_tokens[1].unique().tolist() == [2.0]
    assert torch.equal(pair.text_embedding, prompt)
    # boxes move with their crop: x - 8·start (+ W/2 for the right one)
    assert pair.global_face_box[0].tolist() == [8.0, 10.0, 48.0, 50.0]
    assert pair.global_face_box[1].tolist() == [64 + 10.0, 12.0, 64 + 50.0, 52.0]

    batch = collate([pair, pair], two_person=True)
    assert batch.clip_fea is None and torch.equal(batch.first_frames, torch.stack([pair.first_frame] * 2))
    assert batch.audio.shape == (2, 2, T, 5, L, C) and batch.face_clip.shape == (2, 2, 257, D)
    assert batch.audio[0].unique().tolist() == [1.0] and batch.audio[1].unique().tolist() == [2.0]
    tm = batch.token_masks  # [N, B, F, h/2, w/2]
    tok_half = LAT_W // 4
    assert tm[0, :, :, :, tok_half:].abs().sum() == 0, "identity 0's mask leaks into the right half"
    assert tm[1, :, :, :, :tok_half].abs().sum() == 0, "identity 1's mask leaks into the left half"
    assert tm[0].sum() > 0 and tm[1].sum() > 0
    y = batch.y  # [B, 20, F, h, w]: mask channels then first-frame latent
    assert y.shape == (2, 20, F_LAT, LAT_H, LAT_W)
    assert torch.all(y[:, :4, 0] == 1) and y[:, :4, 1:].sum() > 0
    assert torch.allclose(y[:, 4:], torch.stack([pair.first_frame_latent] * 2))


def test_concat_first_frame_uses_the_latent_crop_columns():
    """The side-by-side first frame is [centre half of k | centre half of k+1] in pixels, cropped at the
    same place as the latents: latent column c of the pair covers pixel columns 8c … 8c+7 of the pair."""
    left, right = _sample(1.0, [40, 10, 80, 50], "a"), _sample(2.0, [50, 12, 90, 52], "b")
    pair = concat_side_by_side(left, right, None)
    h_img, w_img = left.image_hw
    assert pair.clip_tokens is None  # no mean of the two samples' tokens: the trainer encodes this frame
    assert pair.first_frame.dtype == torch.uint8 and pair.first_frame.shape == (h_img, w_img, 3)
    (l0, l1), (r0, r1) = pair.meta["crop_columns"]
    expected = torch.cat([left.first_frame[:, 8 * l0:8 * l1], right.first_frame[:, 8 * r0:8 * r1]], dim=1)
    assert torch.equal(pair.first_frame, expected)
    for c in range(LAT_W):
        source_latent_col = round((pair.latents[0, 0, 0, c].item() % 1) * 100)
        marker = 1.0 if c < LAT_W // 2 else 2.0
        assert pair.latents[0, 0, 0, c].item() == pytest.approx(marker + source_latent_col / 100)
        pixels = pair.first_frame[:, 8 * c: 8 * c + 8]
        assert torch.all(pixels[..., 0] == int(marker * 50))  # from the same sample ...
        assert pixels[0, :, 1].tolist() == list(range(8 * source_latent_col, 8 * source_latent_col + 8))  # ... columns
        assert torch.equal(pixels[:, 0, 2], torch.arange(h_img, dtype=torch.uint8))  # rows untouched


def test_two_person_clip_fea_encodes_the_side_by_side_first_frame(tmp_path: Path):
    from anytalker_core.encoders import load_clip_vision, make_tiny_clip_vision

    clip = load_clip_vision(make_tiny_clip_vision(tmp_path / "clip_vision_h.safetensors", hidden_size=D * 4,
                                                  num_heads=2))
    left, right = _sample(1.0, [40, 10, 80, 50], "a"), _sample(3.0, [50, 12, 90, 52], "b")
    for s in (left, right):  # the cached whole-frame tokens, as prepare writes them
        s.clip_tokens = clip.encode(s.first_frame[None])[0].clone()
    batch = collate([concat_side_by_side(left, right, None)], two_person=True)
    encoded = batch.with_image_tokens(clip.encode)
    assert encoded.first_frames is None and encoded.clip_fea.shape == (1, 257, D * 4)
    assert torch.equal(encoded.clip_fea, clip.encode(batch.first_frames))
    mean = 0.5 * (left.clip_tokens + right.clip_tokens)
    assert (encoded.clip_fea[0] - mean).abs().max() > 1e-2
    assert not encoded.clip_fea.is_inference()  # usable as an autograd input
    single = collate([left])
    assert single.first_frames is None and single.with_image_tokens(clip.encode) is single


@pytest.mark.parametrize("box, start", [
    ([0, 10, 30, 50], 0),  # at the left edge: the old centre crop made it a zero-width box
    ([100, 10, 128, 50], 8),  # at the right edge
    ([60, 10, 68, 50], 4),  # centred
    ([0, 10, 64, 50], 0),  # exactly half the frame wide, from the left
])
def test_half_crop_keeps_the_whole_face(box, start):
    assert half_crop_start(box, 128, 16) == start
    c0 = 8 * start
    assert c0 <= box[0] and box[2] <= c0 + 64


def test_edge_faces_pair_and_too_wide_faces_are_named():
    edge, other = _sample(1.0, [0, 10, 30, 50], "edge_clip"), _sample(2.0, [98, 12, 128, 52], "right_edge")
    pair = concat_side_by_side(edge, other, None)
    assert pair.meta["crop_columns"] == [[0, 8], [8, 16]]
    assert pair.global_face_box[0].tolist() == [0.0, 10.0, 30.0, 50.0]
    assert pair.global_face_box[1].tolist() == [64 + 34.0, 12.0, 64 + 64.0, 52.0]
    tm = collate([pair], two_person=True).token_masks
    assert tm[0].sum() > 0 and tm[1].sum() > 0  # both faces keep a mask
    wide = _sample(2.0, [10, 5, 100, 60], "wide_face")
    with pytest.raises(Unpairable, match="'wide_face'.*90 px wide does not fit in half"):
        concat_side_by_side(edge, wide, None)


def test_concat_without_cached_first_frame_asks_to_rerun_prepare():
    left, old = _sample(1.0, [40, 10, 80, 50], "a"), _sample(2.0, [50, 12, 90, 52], "old")
    old.first_frame = None
    with pytest.raises(InputError, match="'old' has no 'first_frame'.*re-run 'anytalker-train prepare'"):
        concat_side_by_side(left, old, None)


def test_concat_refuses_multi_person_or_mismatched_samples():
    a = _sample(1.0, [40, 10, 80, 50], "a")
    multi = _sample(1.0, [40, 10, 80, 50], "m")
    multi.audio_features = torch.zeros(2, T, L, C)
    with pytest.raises(InputError, match="single-person"):
        concat_side_by_side(a, multi, None)
    small = _sample(1.0, [4, 4, 20, 20], "s")
    small.latents = small.latents[..., :8]
    with pytest.raises(InputError, match="shapes differ"):
        concat_side_by_side(a, small, None)


def test_identity_masks_match_the_core_face_chain():
    from anytalker_core.faces import build_face_masks

    boxes = torch.tensor([[10.0, 8, 40, 40], [70, 10, 110, 48]])
    tm, ym = identity_masks(boxes, (64, 128), (8, 16), 3)
    ref = build_face_masks(boxes.numpy().astype(np.float64), (64, 128), (8, 16), 3)
    assert torch.equal(tm, ref.token_masks) and torch.equal(ym, ref.y_mask)


def test_window_audio_matches_reference_clamping():
    x = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1)
    w = window_audio(x)
    assert w.shape == (6, 5, 1, 1)
    assert w[0, :, 0, 0].tolist() == [0, 0, 0, 1, 2] and w[5, :, 0, 0].tolist() == [3, 4, 5, 5, 5]
    from anytalker_core.audio.windowed import window_features

    h = torch.randn(7, 2, 3)
    assert torch.equal(window_audio(h), window_features(h))


def test_condition_dropout_uses_empty_prompt_and_zero_audio():
    s = _sample(1.0, [40, 10, 80, 50], "a")
    batch = collate([s] * 64)
    empty = torch.full((5, D), -3.0)
    out = apply_condition_dropout(batch, torch.Generator().manual_seed(0), 0.5, 0.5, empty)
    dropped_text = [i for i in range(64) if torch.all(out.context[i, :5] == -3.0)]
    kept_text = [i for i in range(64) if torch.all(out.context[i, :3] == 1.0)]
    assert len(dropped_text) + len(kept_text) == 64 and 10 < len(dropped_text) < 54
    assert out.context.shape[1] == 5  # padded to the longer empty-prompt embedding
    dropped_audio = [i for i in range(64) if out.audio[:, i].abs().sum() == 0]
    assert 10 < len(dropped_audio) < 54 and set(dropped_audio) != set(dropped_text)
    assert torch.all(batch.audio == 1.0), "the input batch must not be modified"
    none = apply_condition_dropout(batch, torch.Generator().manual_seed(0), 0.0, 0.0, empty)
    assert torch.equal(none.context, batch.context) and torch.equal(none.audio, batch.audio)


def test_cached_sample_roundtrip_and_index(tmp_path: Path):
    s = _sample(1.5, [40, 10, 80, 50], "clip_a")
    tensors = {"latents": s.latents, "first_frame_latent": s.first_frame_latent,
               "audio_features": s.audio_features, "face_boxes": torch.full((1, T, 4), float("nan")),
               "global_face_box": s.global_face_box, "face_clip_tokens": s.face_clip_tokens,
               "clip_tokens": s.clip_tokens, "text_embedding": s.text_embedding, "first_frame": s.first_frame}
    meta = {"id": "clip_a", "height": 64, "width": 128, "latent_frames": F_LAT, "latent_height": LAT_H,
            "latent_width": LAT_W, "num_identities": 1, "frames": T, "fps": 24}
    write_sample(tmp_path / "cache" / "samples", "clip_a", tensors, meta)
    # a half-written sample (no json yet) is invisible to training
    (tmp_path / "cache" / "samples" / "partial.safetensors").write_bytes(b"garbage")
    index = CacheIndex([tmp_path / "cache"])
    assert len(index) == 1 and index.key(0) == (1, F_LAT, LAT_H, LAT_W)
    back = load_sample(index.paths[0])
    assert back.image_hw == (64, 128)
    assert torch.allclose(back.latents, s.latents, atol=1e-2)  # stored as bfloat16
    assert torch.equal(back.global_face_box, s.global_face_box)  # boxes stay float32
    assert back.first_frame.dtype == torch.uint8 and torch.equal(back.first_frame, s.first_frame)  # pixels exact
    assert index.has_tensor(0, "first_frame") and not index.has_tensor(0, "nothing")
    assert json.loads((tmp_path / "cache" / "samples" / "clip_a.json").read_text())["id"] == "clip_a"
    assert SharedEmbeddings.load(tmp_path / "cache").empty is None
    with pytest.raises(InputError, match="prepare"):
        CacheIndex([tmp_path / "nothing"])


# ----------------------------------------------------------------------------------- memory model


def test_memory_model_counts_the_released_sizes_and_shards_states():
    from train.memory import GIB, estimate, parameter_counts, preset_config, tokens

    assert tokens(81, 480, 832) == 21 * 30 * 52 == 32760
    big = preset_config("14B")
    params, block = parameter_counts(big)
    assert round(params / 1e9, 1) == 21.0  # the 14B release holds 21.0B parameters (REFERENCE.md)
    ddp = estimate(big, 32, "ddp", counts=(params, block))
    fsdp = estimate(big, 32, "fsdp2", counts=(params, block))
    assert ddp.states_gib == pytest.approx(16 * params / GIB)
    assert fsdp.states_gib == pytest.approx(ddp.states_gib / 32)
    assert fsdp.gathered_gib == pytest.approx(12 * block / GIB)
    assert ddp.activations_gib == fsdp.activations_gib
    half = estimate(big, 32, "fsdp2", sp=2, counts=(params, block))
    assert half.activations_gib == pytest.approx(fsdp.activations_gib / 2, rel=1e-3)
    assert ddp.total_gib > 141 > fsdp.total_gib  # 14B needs sharding to fit an H200
