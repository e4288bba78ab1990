"""The ComfyUI nodes without ComfyUI: schemas, each node's execute, and whole graphs for 1-3 people.

ComfyUI's API is the stand-in in tests/comfy_stub (tests/test_comfyui_server.py runs the same nodes
in a real server). Models are anytalker_core's tiny random-weight set in real file formats.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, missing

STUB = REPO / "tests" / "comfy_stub"
sys.path.insert(0, str(STUB))  # the stand-in (tests/test_comfyui_server.py covers the real thing)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import comfy.model_management as mm
import comfy.utils
import folder_paths

from anytalker_core.errors import InputError

SR = 16000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny models in a ComfyUI models/ folder, speech for 3 people, the astronaut image, native stand-ins."""
    from native_models import NativeClipVision, NativeVAE, text_conditioning

    from anytalker_core.testing.speech import synthesize_speech
    from anytalker_core.testing.demo import DEMO_SENTENCES, build_demo_models, demo_image

    root = tmp_path_factory.mktemp("comfy")
    paths = build_demo_models(root / "models")
    folder_paths.models_dir = str(root / "models")
    speech = []
    for i, (text, voice) in enumerate(DEMO_SENTENCES[:3]):
        speech.append(synthesize_speech(text.split(",")[0], voice=voice, sample_rate=SR))
    return {
        "paths": paths,
        "speech": speech,
        "image": lambda n: torch.from_numpy(demo_image(n, size=96)).float().div(255).unsqueeze(0),
        "vae": NativeVAE(paths.vae),
        "clip_vision": NativeClipVision(paths.clip_vision),
        "positive": text_conditioning(paths.text_encoder, "two astronauts talk"),
        "negative": text_conditioning(paths.text_encoder, "blurry"),
    }


def audio_dict(wave: torch.Tensor, rate: int = SR, channels: int = 1) -> dict:
    return {"waveform": wave.reshape(1, 1, -1).repeat(1, channels, 1), "sample_rate": rate}


def run(node, **kwargs):
    out = node.execute(**kwargs)
    return out.args


# ------------------------------------------------------------------------------------------- schemas


def test_entrypoint_lists_every_node_with_a_complete_schema():
    from nodes import NODES, comfy_entrypoint

    extension = asyncio.run(comfy_entrypoint())
    listed = asyncio.run(extension.get_node_list())
    assert [n.__name__ for n in listed] == [n.__name__ for n in NODES]
    ids = set()
    for node in listed:
        schema = node.define_schema()
        schema.validate()
        assert schema.node_id.startswith("AnyTalker") and schema.node_id == node.__name__
        assert schema.category.startswith("AnyTalker/")
        assert schema.description
        ids.add(schema.node_id)
        for inp in schema.inputs:
            assert inp.tooltip, f"{schema.node_id}.{inp.id} has no tooltip"
            if hasattr(inp, "template"):
                assert inp.template.input.tooltip
    assert len(ids) == 13  # 9 pack nodes + 4 of the native route (nodes/native)


def test_audio_encode_takes_a_variable_number_of_speakers():
    from nodes.inputs import AnyTalkerAudioEncode

    speakers = next(i for i in AnyTalkerAudioEncode.define_schema().inputs if i.id == "speakers")
    assert speakers.template.prefix == "audio" and speakers.template.min == 1 and speakers.template.max == 8


# ------------------------------------------------------------------------------------------- nodes


def load_models(world):
    from nodes.loaders import AnyTalkerModelLoader, AnyTalkerWav2VecLoader

    dit_name = folder_paths.get_filename_list("diffusion_models")[0]
    (model,) = run(AnyTalkerModelLoader, model_name=dit_name, weight_dtype="auto", attention="sdpa")
    w2v_name = next(n for n in folder_paths.get_filename_list("audio_encoders") if n.endswith("model.safetensors"))
    (wav2vec,) = run(AnyTalkerWav2VecLoader, model_name=w2v_name)
    return model, wav2vec


@pytest.mark.slow
@pytest.mark.parametrize("people", [1, 2, 3])
def test_graph_audio_faces_conditioning_sampler_decode(world, people, tmp_path):
    from native_models import vae_decode_node

    from nodes.generate import AnyTalkerConditioning, AnyTalkerSampler
    from nodes.inputs import AnyTalkerAudioEncode, AnyTalkerFaceMasks

    model, wav2vec = load_models(world)
    from anytalker_core.model.precision import auto_dtype

    # weight_dtype auto: bf16 on a CPU with bf16 matrix units (this CI machine has AVX512-BF16), else fp32
    assert model.dtype == auto_dtype("cpu") and next(model.dit.parameters()).device.type == "cpu"
    rates = [SR, 22050, 44100]
    speakers = {}
    for i in range(people):
        wave = world["speech"][i]
        if rates[i] != SR:  # other rates and stereo arrive from Load Audio; the node resamples and mixes down
            from anytalker_core.io.media import resample
            wave = resample(wave, SR, rates[i])
        speakers[f"audio{i}"] = audio_dict(wave, rates[i], channels=1 + i % 2)
    feats, n, frames, mixed, intervals = run(AnyTalkerAudioEncode, wav2vec=wav2vec, speakers=speakers,
                                             mode="concat" if people == 3 else "pad", frame_count=9)
    assert n == people and frames == 9
    assert feats.conditioning.features.shape[:2] == (people, frames)
    # the video's sound is the users' own: the highest input rate, the most channels (stereo from person 2 on)
    rate, channels = max(rates[:people]), 1 + (people > 1)
    assert mixed["sample_rate"] == rate and mixed["waveform"].shape == (1, channels, round(frames / 24 * rate))
    assert set(json.loads(intervals)) == set(feats.names) and len(feats.names) == people

    image = world["image"](people)  # [1, 96, 96 * people, 3]
    boxes = "; ".join(f"{96 * i + 30},20,{96 * i + 66},60" for i in range(people))
    faces, masks, preview = run(AnyTalkerFaceMasks, image=image, people=n, detector="auto", masks=None, boxes=boxes)
    assert faces.num_faces == people and masks.shape == (people, 96, 96 * people)
    assert preview.shape == image.shape and not torch.equal(preview, image)
    assert np.all(np.diff(faces.boxes[:, 0]) > 0)  # identity order = left to right

    comfy.utils.UPDATES.clear()
    cond, width, height = run(AnyTalkerConditioning, positive=world["positive"], negative=world["negative"],
                              clip_vision=world["clip_vision"], vae=world["vae"], start_image=image, faces=faces,
                              audio_features=feats, max_pixels=64 * 64 * people)
    # progress through every stage: CLIP of the image, of each face, then the VAE encode (was 0 % throughout)
    assert comfy.utils.UPDATES == [(i, people + 2) for i in range(1, people + 3)]
    assert width % 32 == 0 and height % 32 == 0 and width * height <= 64 * 64 * people
    f_lat = (frames - 1) // 4 + 1
    assert cond.y.shape == (1, 20, f_lat, height // 8, width // 8)
    assert len(cond.speakers) == people

    import latent_preview

    comfy.utils.UPDATES.clear()
    latent_preview.PREVIEWS.clear()
    (latent,) = run(AnyTalkerSampler, model=model, conditioning=cond, seed=1, steps=2, sampler_name="unipc",
                    cfg=4.5, shift=0.0, audio_cfg=0.0 if people != 2 else 2.0)
    assert latent["samples"].shape == (1, 16, f_lat, height // 8, width // 8)
    assert torch.isfinite(latent["samples"]).all()
    assert comfy.utils.UPDATES[-1] == (2, 2)
    assert latent_preview.PREVIEWS == [tuple(latent["samples"].shape)] * 2  # a latent preview after each step
    assert next(model.dit.parameters()).device.type == "cpu"  # back on the offload device

    video = vae_decode_node(world["vae"], latent)
    assert video.shape == (frames, height, width, 3)
    assert mixed["waveform"].shape[-1] / mixed["sample_rate"] == pytest.approx(video.shape[0] / 24, abs=1 / SR)

    # The graph ends in native Create Video (24 fps, mixed_audio) -> Save Video (exercised for real in
    # test_comfyui_server.py); here the same frames and audio are muxed with the core writer and read back.
    from anytalker_core.io.media import read_video, write_video

    out = write_video(tmp_path / "talk.mp4", video.numpy(), fps=24,
                      audio=mixed["waveform"][0].mean(0), sample_rate=mixed["sample_rate"])
    clip = read_video(out)
    assert clip.num_frames == frames and clip.fps == pytest.approx(24)
    assert clip.audio is not None and clip.audio.shape[-1] / clip.sample_rate == pytest.approx(frames / 24, abs=0.03)


def test_sampler_is_deterministic_and_interruptible(world):
    from nodes.generate import AnyTalkerConditioning, AnyTalkerSampler
    from nodes.inputs import AnyTalkerAudioEncode, AnyTalkerFaceMasks

    model, wav2vec = load_models(world)
    feats, n, *_ = run(AnyTalkerAudioEncode, wav2vec=wav2vec, speakers={"audio0": audio_dict(world["speech"][0])},
                       mode="pad", frame_count=5)
    image = world["image"](1)
    faces, _, _ = run(AnyTalkerFaceMasks, image=image, people=n, boxes="30,20,66,60")
    cond, *_ = run(AnyTalkerConditioning, positive=world["positive"], negative=world["negative"],
                   clip_vision=world["clip_vision"], vae=world["vae"], start_image=image, faces=faces,
                   audio_features=feats, max_pixels=64 * 64)
    settings = {"model": model, "conditioning": cond, "steps": 2, "sampler_name": "euler", "cfg": 3.0}
    a = run(AnyTalkerSampler, seed=7, **settings)[0]["samples"]
    b = run(AnyTalkerSampler, seed=7, **settings)[0]["samples"]
    c = run(AnyTalkerSampler, seed=8, **settings)[0]["samples"]
    assert torch.equal(a, b) and not torch.equal(a, c)

    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        run(AnyTalkerSampler, seed=7, **settings)
    assert not mm.processing_interrupted()
    assert next(model.dit.parameters()).device.type == "cpu"


def test_long_sampler_overlapping_windows(world, tmp_path):
    """13 frames in windows of 9 (overlap 1: frames 0-8, 8-12), 21 in windows of 13 with 5 motion frames (0-12,
    8-20); one window = Sampler + VAE Decode; a windowed conditioning gives the same frames; a cancelled run
    keeps its finished windows and the next run continues from them."""
    from native_models import vae_decode_node

    from anytalker_core.generation.windows import WindowedCondition
    from nodes.generate import WORK_FOLDER, AnyTalkerConditioning, AnyTalkerLongSampler, AnyTalkerSampler
    from nodes.inputs import AnyTalkerAudioEncode, AnyTalkerFaceMasks

    folder_paths.output_directory = str(tmp_path / "output")
    model, wav2vec = load_models(world)
    feats, n, *_ = run(AnyTalkerAudioEncode, wav2vec=wav2vec, speakers={"audio0": audio_dict(world["speech"][0])},
                       mode="pad", frame_count=13)
    image = world["image"](1)
    faces, _, _ = run(AnyTalkerFaceMasks, image=image, people=n, boxes="30,20,66,60")
    conditioning = dict(positive=world["positive"], negative=world["negative"], clip_vision=world["clip_vision"],
                        vae=world["vae"], start_image=image, faces=faces, audio_features=feats, max_pixels=64 * 64)
    cond, width, height = run(AnyTalkerConditioning, **conditioning)
    settings = {"model": model, "conditioning": cond, "vae": world["vae"], "clip_vision": world["clip_vision"],
                "seed": 3, "steps": 2, "sampler_name": "euler", "cfg": 3.0}
    comfy.utils.UPDATES.clear()
    (frames,) = run(AnyTalkerLongSampler, window_frames=9, **settings)
    assert frames.shape == (13, height, width, 3) and 0 <= frames.min() and frames.max() <= 1
    assert comfy.utils.UPDATES[-1] == (4, 4)  # 2 windows x 2 steps
    assert next(model.dit.parameters()).device.type == "cpu"
    assert not (tmp_path / "output" / WORK_FOLDER).exists()  # finished: the work folder is gone

    (whole,) = run(AnyTalkerLongSampler, window_frames=13, **settings)
    (latent,) = run(AnyTalkerSampler, model=model, conditioning=cond, seed=3, steps=2, sampler_name="euler", cfg=3.0)
    one_pass = vae_decode_node(world["vae"], latent)
    assert (whole - one_pass).abs().max() <= 1 / 255 + 1e-6  # the same video, up to uint8 rounding
    assert not torch.equal(whole, frames)  # windows: frames 9-12 come from the second window

    # conditioned one window at a time (window_frames on the conditioning node): the same clip
    windowed, w2, h2 = run(AnyTalkerConditioning, **conditioning, window_frames=9)
    assert isinstance(windowed, WindowedCondition) and (w2, h2) == (width, height)
    assert windowed.template.y.shape[2] == 3 and windowed.features.shape[1] == 13  # 9 frames of y, 13 of audio
    (again,) = run(AnyTalkerLongSampler, window_frames=9, **{**settings, "conditioning": windowed})
    assert (again - frames).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(InputError, match="use AnyTalker Long Sampler|generate it with AnyTalker Long Sampler"):
        run(AnyTalkerSampler, model=model, conditioning=windowed, seed=3, steps=2, sampler_name="euler", cfg=3.0)
    with pytest.raises(InputError, match="window_frames 13 is longer than the window_frames 9"):
        run(AnyTalkerLongSampler, window_frames=13, **{**settings, "conditioning": windowed})

    # 21 frames in windows of 13 overlapping by 5 motion frames: 0-12, 8-20
    speech = torch.cat([world["speech"][0]] * 2)
    feats21, *_ = run(AnyTalkerAudioEncode, wav2vec=wav2vec, speakers={"audio0": audio_dict(speech)}, mode="pad",
                      frame_count=21)
    cond21, _, _ = run(AnyTalkerConditioning, **{**conditioning, "audio_features": feats21})
    settings = {**settings, "conditioning": cond21}
    (overlapped,) = run(AnyTalkerLongSampler, window_frames=13, overlap_frames=5, **settings)
    (chained,) = run(AnyTalkerLongSampler, window_frames=13, overlap_frames=1, **settings)
    assert overlapped.shape == chained.shape == (21, height, width, 3) and not torch.equal(overlapped, chained)
    with pytest.raises(InputError, match="window_frames must be 4m\\+1"):
        run(AnyTalkerLongSampler, window_frames=10, **settings)
    with pytest.raises(InputError, match="overlap_frames 9 is more than half of a 13-frame window"):
        run(AnyTalkerLongSampler, window_frames=13, overlap_frames=9, **settings)

    # cancel in the second window: the first stays in the work folder, and the next run starts from it
    calls = []
    real = mm.throw_exception_if_processing_interrupted

    def cancel_in_window_2():
        calls.append(1)
        if len(calls) == 4:  # before window 1: 1 check; window 1's 2 steps; then window 2
            mm.interrupt_current_processing(True)
        real()

    mm.throw_exception_if_processing_interrupted = cancel_in_window_2
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(AnyTalkerLongSampler, window_frames=13, overlap_frames=5, **settings)
    finally:
        mm.throw_exception_if_processing_interrupted = real
    assert not mm.processing_interrupted()
    assert len(list((tmp_path / "output" / WORK_FOLDER).glob("*/window_*.npz"))) == 1
    comfy.utils.UPDATES.clear()
    (resumed,) = run(AnyTalkerLongSampler, window_frames=13, overlap_frames=5, **settings)
    assert torch.equal(resumed, overlapped) and comfy.utils.UPDATES[0] == (2, 4)  # window 1 was not redone
    assert next(model.dit.parameters()).device.type == "cpu"


@pytest.mark.slow
def test_long_sampler_sixty_second_conversation(world, tmp_path):
    """The workflow path for a 60 s two-person conversation: Audio Encode (2 voices) -> Face Masks ->
    Conditioning (one window) -> Long Sampler (81-frame windows, 9 motion frames): 1441 frames."""
    from anytalker_core.generation.windows import WindowedCondition
    from anytalker_core.testing.conversation import synthesize_conversation
    from anytalker_core.testing.demo import demo_image
    from nodes.generate import AnyTalkerConditioning, AnyTalkerLongSampler
    from nodes.inputs import AnyTalkerAudioEncode, AnyTalkerFaceMasks

    folder_paths.output_directory = str(tmp_path / "output")
    model, wav2vec = load_models(world)
    tracks = synthesize_conversation(60.1)
    feats, n, frame_count, mixed, _ = run(AnyTalkerAudioEncode, wav2vec=wav2vec, mode="pad", frame_count=0,
                                          speakers={f"audio{i}": audio_dict(t) for i, t in enumerate(tracks)})
    assert n == 2 and frame_count == 1441
    image = torch.from_numpy(demo_image(2, size=32)).float().div(255).unsqueeze(0)
    faces, _, _ = run(AnyTalkerFaceMasks, image=image, people=2, boxes="9,6,23,20; 41,6,55,20")
    cond, width, height = run(AnyTalkerConditioning, positive=world["positive"], negative=world["negative"],
                              clip_vision=world["clip_vision"], vae=world["vae"], start_image=image, faces=faces,
                              audio_features=feats, max_pixels=32 * 64)
    assert isinstance(cond, WindowedCondition) and cond.template.y.shape[2] == 21  # one 81-frame window encoded
    comfy.utils.UPDATES.clear()
    (frames,) = run(AnyTalkerLongSampler, model=model, conditioning=cond, vae=world["vae"],
                    clip_vision=world["clip_vision"], window_frames=81, seed=1, steps=1, sampler_name="euler",
                    cfg=3.0)
    assert frames.shape == (1441, height, width, 3) == (1441, 32, 64, 3)
    assert comfy.utils.UPDATES[-1] == (20, 20)  # 20 windows x 1 step
    assert mixed["waveform"].shape[-1] == round(1441 / 24 * SR)


def test_faces_from_masks_and_detector(world):
    from nodes.inputs import AnyTalkerFaceMasks

    image = world["image"](2)
    drawn = torch.zeros(2, 96, 192)
    drawn[0, 20:60, 30:66] = 1
    drawn[1, 25:55, 126:160] = 1
    faces, masks, _ = run(AnyTalkerFaceMasks, image=image, people=2, masks=drawn)
    assert masks.shape == (2, 96, 192) and masks[1, 40, 140] == 1
    assert faces.masks is not None and faces.boxes.tolist()[1] == [126, 25, 160, 55]
    detected, _, preview = run(AnyTalkerFaceMasks, image=image, people=2, detector="mediapipe")
    assert preview.shape == image.shape
    assert detected.num_faces == 2 and detected.boxes[0, 0] < 96 <= detected.boxes[1, 0]


# ------------------------------------------------------------------------------------------ errors


def test_errors_name_the_input(world):
    from nodes.generate import AnyTalkerConditioning, AnyTalkerSampler
    from nodes.inputs import AnyTalkerAudioEncode, AnyTalkerFaceMasks

    model, wav2vec = load_models(world)
    with pytest.raises(InputError, match="audio input 2: holds a batch of 2"):
        run(AnyTalkerAudioEncode, wav2vec=wav2vec, speakers={
            "audio0": audio_dict(world["speech"][0]),
            "audio1": {"waveform": torch.zeros(2, 1, SR), "sample_rate": SR}})
    with pytest.raises(InputError, match="audio input 1: expected a ComfyUI AUDIO"):
        run(AnyTalkerAudioEncode, wav2vec=wav2vec, speakers={"audio0": torch.zeros(SR)})
    with pytest.raises(InputError, match="connect at least one AUDIO"):
        run(AnyTalkerAudioEncode, wav2vec=wav2vec, speakers={})
    with pytest.raises(InputError, match="connect exactly one of wav2vec .* and audio_encoder"):
        run(AnyTalkerAudioEncode, speakers={"audio0": audio_dict(world["speech"][0])})
    class WhisperLargeV3(torch.nn.Module):  # named as ComfyUI's, which Load Audio Encoder also returns
        pass

    class Whisper:
        model = WhisperLargeV3()

        def encode_audio(self, audio, sample_rate):
            raise AssertionError("not called")

    with pytest.raises(InputError, match="audio_encoder: the audio encoder is a WhisperLargeV3; AnyTalker needs "
                                         "wav2vec2-base-960h"):
        run(AnyTalkerAudioEncode, audio_encoder=Whisper(), speakers={"audio0": audio_dict(world["speech"][0])})
    with pytest.raises(InputError, match="audio_encoder: expected an AUDIO_ENCODER"):
        run(AnyTalkerAudioEncode, audio_encoder="wav2vec2.safetensors",
            speakers={"audio0": audio_dict(world["speech"][0])})
    with pytest.raises(InputError, match="every audio track is silent"):
        run(AnyTalkerAudioEncode, wav2vec=wav2vec, speakers={"audio0": audio_dict(torch.zeros(SR))})
    image = world["image"](2)
    with pytest.raises(InputError, match="box 2 '1,2,3' has 3 numbers"):
        run(AnyTalkerFaceMasks, image=image, people=2, boxes="30,20,66,60; 1,2,3")
    with pytest.raises(InputError, match="1 face mask"):
        run(AnyTalkerFaceMasks, image=image, people=2, masks=torch.ones(1, 96, 192))
    with pytest.raises(InputError, match="masks are 10x10 but the image is 192x96"):
        run(AnyTalkerFaceMasks, image=image, people=1, masks=torch.ones(1, 10, 10))

    feats, *_ = run(AnyTalkerAudioEncode, wav2vec=wav2vec, speakers={"audio0": audio_dict(world["speech"][0])})
    faces2, _, _ = run(AnyTalkerFaceMasks, image=image, people=2, boxes="30,20,66,60; 126,20,160,60")
    common = {"positive": world["positive"], "negative": world["negative"], "clip_vision": world["clip_vision"],
                  "vae": world["vae"], "audio_features": feats, "max_pixels": 64 * 64}
    with pytest.raises(InputError, match="2 face\\(s\\) for 1 audio input"):
        run(AnyTalkerConditioning, start_image=image, faces=faces2, **common)
    faces1, _, _ = run(AnyTalkerFaceMasks, image=image, people=1, boxes="30,20,66,60")
    with pytest.raises(InputError, match="192x96 image but start_image is 96x96"):
        run(AnyTalkerConditioning, start_image=world["image"](1), faces=faces1, **common)
    with pytest.raises(InputError, match="positive: expected a CONDITIONING"):
        run(AnyTalkerConditioning, start_image=image, faces=faces1, **{**common, "positive": "a prompt"})

    cond, *_ = run(AnyTalkerConditioning, start_image=image, faces=faces1, **common)
    cond.prompts.context = torch.zeros(1, 512, 4096)  # e.g. a real umt5_xxl with the tiny DiT
    with pytest.raises(InputError, match="positive: embeddings are 4096 wide but the AnyTalker model expects 32"):
        run(AnyTalkerSampler, model=model, conditioning=cond, steps=1)


def test_score_video_node(world, tmp_path):
    from anytalker_core.metrics.syncnet import SyncNet, save_syncnet
    from nodes.score import AnyTalkerScoreVideo

    frames = world["image"](2).repeat(12, 1, 1, 1)  # a still two-face clip: listeners do not move
    intervals = json.dumps({"left": [[0.0, 0.2]], "right": [[0.2, 0.5]]})
    score, c_star, plot, report, drift_plot, drift = run(AnyTalkerScoreVideo, images=frames, fps=24.0,
                                                         speaking_intervals=intervals)
    info = json.loads(report)
    assert plot.ndim == 4 and plot.shape[-1] == 3 and drift_plot.ndim == 4 and drift_plot.shape[-1] == 3
    rows = drift.strip().splitlines()
    assert rows[0].startswith("| window | frames | time_s | delta_e |") and len(rows) == 3  # one window
    assert rows[2].startswith("| 1 | 0-11 | 0.0-0.5 | 0.000 |")  # the first frame is the start image
    cast = (frames[:1] * torch.tensor([1.0, 0.8, 0.6])).clamp(0, 1)
    *_, drift = run(AnyTalkerScoreVideo, images=frames, fps=24.0, speaking_intervals=intervals, start_image=cast,
                    window_frames=9, overlap_frames=1)
    rows = drift.strip().splitlines()[2:]
    assert [r.split(" | ")[1] for r in rows] == ["0-7", "8-11"]  # windows of 9 frames overlapping by 1
    assert all(float(r.split(" | ")[3]) > 5 for r in rows)  # far from the (cast) start image's colours
    assert info["status"] == "ok" and score == 0.0  # both faces found in every frame, nobody moves
    assert c_star == -1.0 and "no weights" in info["sync_note"]
    with pytest.raises(InputError, match="speaking_intervals: not valid JSON"):
        run(AnyTalkerScoreVideo, images=frames, speaking_intervals="{left: [}")

    # SyncNet weights in models/syncnet (a tiny random net in the released file format) + the clip's audio
    folder_paths.add_model_folder_path("syncnet", str(tmp_path / "syncnet"))
    (tmp_path / "syncnet").mkdir()
    torch.manual_seed(0)
    save_syncnet(SyncNet(embed_dim=16), tmp_path / "syncnet" / "syncnet_v2.model")
    combo = next(i for i in AnyTalkerScoreVideo.define_schema().inputs if i.id == "syncnet_model")
    assert combo.kwargs["options"][0] == "none" and "syncnet_v2.model" in combo.kwargs["options"]
    audio = audio_dict(world["speech"][0][: SR // 2])
    _, c_star, _, report, _, _ = run(AnyTalkerScoreVideo, images=frames, fps=24.0, speaking_intervals=intervals,
                                     audio=audio, syncnet_model="syncnet_v2.model")
    info = json.loads(report)
    assert info["sync_note"] == "" and info["sync_c"] is not None and info["sync_d"] > 0
    assert c_star == info["sync_c_star"] >= 0


def test_pack_loads_the_way_comfyui_loads_it():
    """ComfyUI imports the pack folder's __init__.py under a path-derived module name; the entry point
    must resolve ``.nodes`` relative to it (ComfyUI has its own top-level ``nodes`` module)."""
    import importlib.util

    name = str(REPO).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        assert not hasattr(module, "NODE_CLASS_MAPPINGS")  # else ComfyUI would ignore comfy_entrypoint
        extension = asyncio.run(module.comfy_entrypoint())
        assert len(asyncio.run(extension.get_node_list())) == 13
        assert sys.modules[name + ".nodes"].__file__ == str(REPO / "nodes" / "__init__.py")
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_model_loader_fp8_block_storage(world):
    from nodes.loaders import AnyTalkerModelLoader

    dit_name = folder_paths.get_filename_list("diffusion_models")[0]
    (model,) = run(AnyTalkerModelLoader, model_name=dit_name, weight_dtype="bf16", attention="sdpa",
                   block_storage="fp8_e4m3fn")
    stored = {m.weight.dtype for m in model.dit.blocks.modules() if hasattr(m, "scale")}
    assert stored == {torch.float8_e4m3fn}
    assert model.dit.patch_embedding.weight.dtype == torch.bfloat16


def test_a_silent_speaker_listens(world):
    """A fully silent AUDIO is a person who only listens: the run goes on and that person has no speaking
    interval (issue 11: it used to reject the whole run)."""
    from nodes.inputs import AnyTalkerAudioEncode

    _, wav2vec = load_models(world)
    talk = world["speech"][0]
    feats, n, frames, mixed, intervals = run(AnyTalkerAudioEncode, wav2vec=wav2vec, speakers={
        "audio0": audio_dict(torch.zeros_like(talk)), "audio1": audio_dict(talk)})
    spans = json.loads(intervals)
    assert n == 2 and spans[feats.names[0]] == [] and spans[feats.names[1]]
    assert feats.conditioning.features[0].abs().sum() > 0  # wav2vec2's own features of silence


def test_missing_model_file_says_where_it_goes_and_where_to_get_it(world):
    """Instead of ComfyUI's generic "Value not in list": the folder, the files found there and the download."""
    from nodes.loaders import AnyTalkerModelLoader, AnyTalkerWav2VecLoader
    from nodes.model_files import BY_NAME

    present = folder_paths.get_filename_list("diffusion_models")[0]
    assert AnyTalkerModelLoader.validate_inputs(model_name=present) is True
    message = AnyTalkerModelLoader.validate_inputs(model_name="1_3B-single-v1.pth")
    assert message.startswith("model_name: '1_3B-single-v1.pth' is not in ComfyUI/models/diffusion_models/")
    assert present in message and BY_NAME["1_3B-single-v1.pth"].url in message
    message = AnyTalkerWav2VecLoader.validate_inputs(model_name="wav2vec2-base-960h.safetensors")
    assert "ComfyUI/models/audio_encoders/" in message and "facebook/wav2vec2-base-960h" in message
    assert "as wav2vec2-base-960h.safetensors" in message  # the download is called model.safetensors
    message = AnyTalkerModelLoader.validate_inputs(model_name="my_finetune.safetensors")
    assert "my_finetune.safetensors" in message and "Put the file in ComfyUI/models/diffusion_models/" in message


def test_one_pass_longer_than_training_warns(caplog):
    """A single pass over more than the 81 training frames works but says it will drift (issue 11: 473 frames in
    one pass, no warning)."""
    from types import SimpleNamespace

    from nodes.generate import warn_if_longer_than_training

    with caplog.at_level("WARNING"):
        warn_if_longer_than_training(SimpleNamespace(y=torch.zeros(1, 20, 21, 2, 2)))  # 81 frames
        assert not caplog.records
        warn_if_longer_than_training(SimpleNamespace(y=torch.zeros(1, 20, 119, 2, 2)))  # 473 frames
    assert "473 frames" in caplog.text and "5.8x the 81-frame training length" in caplog.text
    assert "AnyTalker Long Sampler" in caplog.text


def test_split_voices_node_returns_one_audio_per_person_and_intervals():
    from nodes.voices import AnyTalkerSplitVoices

    from anytalker_core.metrics.diarization import diarization_error_rate
    from anytalker_core.testing.conversation import make_conversation

    conv = make_conversation(["arctic_a", "high"], 4, seed=8)
    stereo = torch.from_numpy(conv.mix).reshape(1, 1, -1).repeat(1, 2, 1)
    out = run(AnyTalkerSplitVoices, audio={"waveform": stereo, "sample_rate": SR}, speakers=0)
    tracks, people, intervals = out[:8], out[8], json.loads(out[9])
    assert people == 2 and set(intervals) == {"left", "right"}
    assert diarization_error_rate(conv.turns, [intervals["left"], intervals["right"]]).der <= 0.15
    for track in tracks[:2]:
        assert track["sample_rate"] == SR and track["waveform"].shape == stereo.shape
        assert track["waveform"].abs().max() > 0.1
    assert all(t["waveform"].abs().max() == 0 for t in tracks[2:])  # no third person: silent
    with pytest.raises(InputError, match="order"):
        run(AnyTalkerSplitVoices, audio={"waveform": stereo, "sample_rate": SR}, speakers=2, order="x")


def test_split_voices_node_separation_model_input(tmp_path, monkeypatch):
    from nodes.voices import AnyTalkerSplitVoices, separation_options

    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    (tmp_path / "audio_separation").mkdir()
    (tmp_path / "audio_separation" / "sep.bin").write_bytes(b"not a checkpoint")
    assert separation_options() == ["none", "sep.bin"]
    audio = {"waveform": torch.zeros(1, 1, SR), "sample_rate": SR}
    with pytest.raises(InputError, match="separation_model: 'other.bin' is not in models/audio_separation"):
        run(AnyTalkerSplitVoices, audio=audio, speakers=2, separation_model="other.bin")
    try:
        import asteroid  # noqa: F401
    except ImportError:
        missing("asteroid is not installed (pip install --no-deps asteroid asteroid-filterbanks)")
    from anytalker_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="separation_model '.*sep.bin' could not be read"):
        run(AnyTalkerSplitVoices, audio=audio, speakers=2, separation_model="sep.bin")
