"""SyncNet: weight files (both formats, clear errors), MFCC against python_speech_features, scoring plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anytalker_core.errors import CheckpointError, InputError, MissingModelError
from anytalker_core.metrics.syncnet import (
    SyncNet,
    crop_face_track,
    load_syncnet,
    mfcc,
    retime_indices,
    save_syncnet,
    sync_scores,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = SyncNet().eval()
    # non-trivial BatchNorm statistics so that a loader that dropped buffers would be caught
    for module in net.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net


def test_layout_and_embedding_sizes(model):
    sd = model.state_dict()
    assert tuple(sd["netcnnaud.0.weight"].shape) == (64, 1, 3, 3)
    assert tuple(sd["netcnnaud.18.weight"].shape) == (512, 256, 5, 4)
    assert tuple(sd["netcnnlip.0.weight"].shape) == (96, 3, 5, 7, 7)
    assert tuple(sd["netcnnlip.18.weight"].shape) == (512, 256, 1, 6, 6)
    assert tuple(sd["netfclip.3.weight"].shape) == (1024, 512)
    with torch.no_grad():
        assert model.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
        assert model.forward_lip(torch.randn(2, 3, 5, 224, 224)).shape == (2, 1024)


@pytest.mark.parametrize("name", ["syncnet_v2.model", "syncnet_v2.safetensors"])
def test_weights_round_trip(tmp_path, model, name):
    path = save_syncnet(model, tmp_path / name)
    loaded = load_syncnet(path)
    assert not loaded.training
    x = torch.randn(3, 1, 13, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_aud(x), model.forward_aud(x), rtol=0, atol=0)


def test_prefixed_state_dict_loads(tmp_path, model):
    path = tmp_path / "wrapped.model"
    torch.save({f"__S__.{k}": v for k, v in model.state_dict().items()}, path)
    assert isinstance(load_syncnet(path), SyncNet)


def test_clear_errors_for_missing_or_wrong_files(tmp_path):
    with pytest.raises(MissingModelError, match="models/syncnet"):
        load_syncnet(tmp_path / "syncnet_v2.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.model.: not a PyTorch checkpoint or safetensors file"):
        load_syncnet(junk)
    other = tmp_path / "other.model"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a syncnet_python SyncNet"):
        load_syncnet(other)
    half = tmp_path / "half.model"
    torch.save({k: v for k, v in SyncNet().state_dict().items() if not k.startswith("netcnnlip")}, half)
    with pytest.raises(CheckpointError, match="missing"):
        load_syncnet(half)


def test_mfcc_matches_python_speech_features():
    n = np.arange(4000)
    x = (8000 * np.sin(2 * np.pi * 220 * n / 16000) + 3000 * np.sin(2 * np.pi * 1250 * n / 16000 + 0.3)).round()
    ours = mfcc(x.astype(np.int16), 16000)
    # python_speech_features 0.6 ``mfcc(x, 16000)`` on the same int16 signal: rows 0, 10, 23; cepstra 0, 1, 5, 12
    expected = np.array([
        [19.36142039539844, 23.51964383491964, 30.56600884162741, -31.868727732027242],
        [19.36863071725323, 17.07442284103459, 26.561905871067754, -30.997877761238904],
        [19.14981697403478, 16.4611567845008, 23.571949440159365, -29.380461193285146],
    ])
    assert ours.shape == (24, 13)
    np.testing.assert_allclose(ours[[0, 10, 23]][:, [0, 1, 5, 12]], expected, rtol=1e-9)


def test_mfcc_matches_python_speech_features_package():
    psf = pytest.importorskip("python_speech_features")  # full comparison where the package is installed
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(12345) * 3000).astype(np.int16)
    np.testing.assert_allclose(mfcc(noise), psf.mfcc(noise, 16000), rtol=1e-9, atol=1e-9)


def test_retime_to_25_fps():
    assert retime_indices(50, 50.0).tolist() == list(range(0, 50, 2))
    idx = retime_indices(24, 24.0)
    assert len(idx) == 25 and idx[0] == 0 and idx[-1] == 23 and np.all(np.diff(idx) >= 0)
    assert retime_indices(25, 25.0).tolist() == list(range(25))


def test_crop_face_track_shape_and_padding():
    frames = np.full((4, 100, 160, 3), 200, dtype=np.uint8)
    boxes = np.tile([[0.0, 0.0, 40.0, 40.0]], (4, 1))  # at the corner: the crop reaches the 110 padding
    crops = crop_face_track(frames, boxes)
    assert crops.shape == (4, 224, 224, 3) and crops.dtype == np.uint8
    assert crops[0, 0, 0, 0] == 110 and crops[0, -1, -1, 0] == 200
    with pytest.raises(InputError, match="one box per frame"):
        crop_face_track(frames, boxes[:2])


def test_sync_scores_plumbing(model):
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 255, size=(14, 224, 224, 3), dtype=np.uint8)
    audio = rng.standard_normal(12 * 640).astype(np.float32) * 0.1  # 12 frames of audio: 12 - 5 windows
    res = sync_scores(model, faces, audio, vshift=3)
    assert res.num_windows == 7 and res.dists.shape == (7, 7)
    mean = res.dists.mean(0)
    assert res.min_dist == pytest.approx(float(mean.min()), abs=1e-5)
    assert res.confidence == pytest.approx(float(torch.median(torch.from_numpy(mean))) - float(mean.min()), abs=1e-5)
    assert res.offset == 3 - int(mean.argmin())
    with pytest.raises(InputError, match="at least 6 frames"):
        sync_scores(model, faces[:5], audio)
