"""Messages in the user's words on each route: the same core check names the CLI flag on the command line,
the node input in ComfyUI (``frame_count``, the ``masks``/``boxes`` inputs — never ``--boxes``), the
argument in the Python API; people are numbered from 1, left to right.

The nodes run against the ComfyUI stand-in in tests/comfy_stub (the real server is tested elsewhere).
"""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import REPO

from anytalker_core.audio.timeline import check_frame_num
from anytalker_core.errors import InputError
from anytalker_core.faces import select_faces
from anytalker_core.input_names import API_NAMES, CLI_NAMES, NODE_NAMES, input_names

STUB = REPO / "tests" / "comfy_stub"
sys.path.insert(0, str(STUB))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SR = 16000


@pytest.mark.parametrize("table, word", [(API_NAMES, "frame_num"), (CLI_NAMES, "--frame-num"),
                                         (NODE_NAMES, "frame_count")])
def test_frame_count_is_named_per_route(table, word):
    with input_names(table), pytest.raises(InputError) as info:
        check_frame_num(401, 81, "pad", 24)
    assert str(info.value).startswith(f"{word} 401 exceeds the audio")
    assert f"use {word} <= 81" in str(info.value)


@pytest.mark.parametrize("table, hint, never", [
    (API_NAMES, "pass boxes or masks (one per person)", "--boxes"),
    (CLI_NAMES, "pass --boxes x1,y1,x2,y2;x1,y1,x2,y2", "'masks' input"),
    (NODE_NAMES, "AnyTalker Face Masks' 'masks' input", "--boxes"),
])
def test_too_few_faces_hint_per_route(table, hint, never):
    with input_names(table), pytest.raises(InputError) as info:
        select_faces([[0, 0, 10, 10]], 2)
    assert str(info.value).startswith("found 1 face but 2 audio tracks were given; ")
    assert hint in str(info.value) and never not in str(info.value)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    import folder_paths

    from anytalker_core.testing.demo import build_demo_models, demo_image

    root = tmp_path_factory.mktemp("comfy")
    build_demo_models(root / "models")
    folder_paths.models_dir = str(root / "models")
    return {"image": torch.from_numpy(demo_image(1, size=96)).float().div(255).unsqueeze(0)}


def test_nodes_speak_comfyui(comfy):
    """The nodes' own inputs in the messages, not the CLI's flags or the API's argument names."""
    import folder_paths

    from anytalker_core.testing.speech import espeak_available, synthesize_speech
    from nodes.inputs import AnyTalkerAudioEncode, AnyTalkerFaceMasks
    from nodes.loaders import AnyTalkerWav2VecLoader

    with pytest.raises(InputError) as info:  # 2 people, 1 face
        AnyTalkerFaceMasks.execute(image=comfy["image"], people=2, detector="mediapipe")
    assert "connect one mask per person to AnyTalker Face Masks' 'masks' input" in str(info.value)
    assert "--" not in str(info.value)

    if not espeak_available():
        pytest.skip("espeak-ng is needed for real speech")
    name = next(n for n in folder_paths.get_filename_list("audio_encoders") if n.endswith("model.safetensors"))
    (wav2vec,) = AnyTalkerWav2VecLoader.execute(model_name=name).args
    speech = synthesize_speech("Hello there.", sample_rate=SR)
    speakers = {"audio0": {"waveform": speech.reshape(1, 1, -1), "sample_rate": SR}}
    with pytest.raises(InputError) as info:
        AnyTalkerAudioEncode.execute(wav2vec=wav2vec, speakers=speakers, frame_count=401)
    assert str(info.value).startswith("frame_count 401 exceeds the audio")
    assert "frame_num" not in str(info.value)
    empty = {"audio0": speakers["audio0"], "audio1": {"waveform": torch.zeros(1, 1, 0), "sample_rate": SR}}
    with pytest.raises(InputError) as info:
        AnyTalkerAudioEncode.execute(wav2vec=wav2vec, speakers=empty)
    assert str(info.value).startswith("audio input 2")  # people from 1: the second input is number 2
