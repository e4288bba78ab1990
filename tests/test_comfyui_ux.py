"""Issue 11 in a real ComfyUI server: what a user meets on the way — core's Load Audio Encoder feeding the pack,
the users' own audio in the saved video, a person who only listens, missing model files, progress and previews.

The server and its inputs come from the ``comfyui_server`` fixture (tests/conftest.py, tests/comfyui_harness.py).
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_harness import saved_files
from test_comfyui_server import two_person_prompt

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(comfyui_server):
    return comfyui_server


def write_wav(path: Path, wave: np.ndarray, rate: int) -> None:
    """A 16-bit PCM wav, ``wave`` ``[S]`` or ``[S, C]`` in -1..1."""
    import wave as wavmod

    wave = wave.reshape(len(wave), -1)
    pcm = np.clip(np.round(wave * 32767), -32768, 32767).astype("<i2")
    with wavmod.open(str(path), "wb") as w:
        w.setnchannels(wave.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def read_speech(server, k: int) -> tuple[np.ndarray, int]:
    """input/person{k}.wav as float ``[S]`` and its rate."""
    import wave as wavmod

    with wavmod.open(str(server.base / "input" / f"person{k}.wav"), "rb") as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
    return pcm[:, 0].astype(np.float32) / 32768, rate


def succeeded(entry: dict) -> bool:
    return entry["status"]["status_str"] == "success"


def test_audio_of_the_saved_video_is_the_users_own(server):
    """48 kHz stereo in -> 48 kHz stereo in the mp4 (it used to be the 16 kHz mono wav2vec2 mix)."""
    import av

    from anytalker_core.io.media import resample

    speech, rate = read_speech(server, 1)
    s48 = resample(speech, rate, 48000).numpy()
    write_wav(server.base / "input" / "person1_48k_stereo.wav", np.stack([s48, 0.5 * s48], axis=1), 48000)
    prompt = two_person_prompt(server.paths)
    prompt["2"]["inputs"]["audio"] = "person1_48k_stereo.wav"
    entry = server.run(prompt)
    assert succeeded(entry), entry["status"]
    (video,) = saved_files(entry, ".mp4")
    path = server.base / "output" / video["subfolder"] / video["filename"]
    with av.open(str(path)) as container:
        (stream,) = container.streams.audio
        assert stream.rate == 48000 and stream.channels == 2
        assert container.streams.video[0].frames == 9


def test_a_silent_track_is_a_listener(server):
    """A fully silent AUDIO for person 2: the run succeeds (it used to reject the whole run)."""
    speech, rate = read_speech(server, 2)
    write_wav(server.base / "input" / "silence.wav", np.zeros_like(speech), rate)
    prompt = two_person_prompt(server.paths)
    prompt["3"]["inputs"]["audio"] = "silence.wav"
    entry = server.run(prompt)
    assert succeeded(entry), entry["status"]


def test_a_missing_model_file_says_where_to_get_it(server):
    """POST /prompt with a model file that is not there: 400, and the message names the folder and the download
    (instead of ComfyUI's bare "Value not in list")."""
    import json

    prompt = two_person_prompt(server.paths)
    prompt["4"]["inputs"]["model_name"] = "14B-multi-v1.pth"  # (the browser test lays out 1_3B-single-v1.pth)
    del prompt["17"]  # the face preview does not need the model: with it the prompt would run that output alone
    with pytest.raises(urllib.error.HTTPError) as raised:
        server.post("/prompt", {"prompt": prompt})
    assert raised.value.code == 400
    body = json.loads(raised.value.read())
    details = " ".join(e["details"] for e in body["node_errors"]["4"]["errors"])
    assert "'14B-multi-v1.pth' is not in ComfyUI/models/diffusion_models/" in details
    assert "huggingface.co/zzz66/AnyTalker-1.3B/resolve/main/14B-multi-v1.pth" in details


@pytest.fixture(scope="module")
def base_size_wav2vec(server):
    """A wav2vec2 of base size (768 wide, 12 layers: what ComfyUI's Load Audio Encoder accepts) with random
    weights, as ``models/audio_encoders/wav2vec2-random-base.safetensors`` (fp16, ~190 MB)."""
    from safetensors.torch import load_file, save_file

    from anytalker_core.testing.tiny_wav2vec import make_tiny_wav2vec

    path = server.base / "models" / "audio_encoders" / "wav2vec2-random-base.safetensors"
    if not path.exists():
        make_tiny_wav2vec(path, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, conv_dim=512,
                          pos_conv_kernel=128)
        save_file({k: v.half() for k, v in load_file(str(path)).items()}, str(path))
    return path.name


def test_core_audio_encoder_feeds_the_pack(server, base_size_wav2vec):
    """ComfyUI's own Load Audio Encoder -> AnyTalker Audio Encode gives the same features as the pack's loader on
    the same file (the reference's input normalisation applied on both paths)."""
    from safetensors.torch import load_file

    speakers = {"speakers.audio0": ["2", 0], "speakers.audio1": ["3", 0], "mode": "pad", "frame_count": 9,
                "normalize_loudness": False}
    prompt = {
        "2": {"class_type": "LoadAudio", "inputs": {"audio": "person1.wav"}},
        "3": {"class_type": "LoadAudio", "inputs": {"audio": "person2.wav"}},
        "5": {"class_type": "AnyTalkerWav2VecLoader", "inputs": {"model_name": base_size_wav2vec}},
        "6": {"class_type": "AnyTalkerAudioEncode", "inputs": {"wav2vec": ["5", 0], **speakers}},
        "7": {"class_type": "AudioEncoderLoader", "inputs": {"audio_encoder_name": base_size_wav2vec}},
        "8": {"class_type": "AnyTalkerAudioEncode", "inputs": {"audio_encoder": ["7", 0], **speakers}},
        "9": {"class_type": "AnyTalkerTestSaveTensors", "inputs": {"filename": "ux/pack.safetensors", "value": ["6", 0]}},
        "10": {"class_type": "AnyTalkerTestSaveTensors", "inputs": {"filename": "ux/core.safetensors",
                                                                    "value": ["8", 0]}},
    }
    entry = server.run(prompt, timeout=600)
    assert succeeded(entry), entry["status"]
    pack = load_file(str(server.base / "output" / "ux" / "pack.safetensors"))
    core = load_file(str(server.base / "output" / "ux" / "core.safetensors"))
    rows, index = "value.conditioning.windowed.rows", "value.conditioning.windowed.index"  # [R, L, C], [N, F, 5]
    assert pack[index].shape == (2, 9, 5) and pack[rows].shape[-1] == 768
    torch.testing.assert_close(core[index], pack[index], rtol=0, atol=0)
    torch.testing.assert_close(core[rows], pack[rows], rtol=1e-4, atol=1e-4)
