"""AnyTalkerPipeline stage by stage, with the tiny random model set (CPU, float32)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from anytalker_core.testing.speech import espeak_available, synthesize_speech
from anytalker_core.testing.demo import DemoWidths, build_demo_models, demo_image
from anytalker_core.errors import InputError, Interrupted
from anytalker_core.cli.generate import generate_to_file
from anytalker_core.generation.pipeline import AnyTalkerPipeline, GenerationRequest, VideoPlan
from anytalker_core.sampling import DEFAULT_NEGATIVE_PROMPT

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is needed for real speech")

AREA = 64 * 96


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> AnyTalkerPipeline:
    paths = build_demo_models(tmp_path_factory.mktemp("models"))
    return AnyTalkerPipeline.from_paths(paths, face_backend="mediapipe")


@pytest.fixture(scope="module")
def speech() -> list[torch.Tensor]:
    return [synthesize_speech("Hello there.", voice="en-us"), synthesize_speech("Fine, thanks.", voice="en-gb")]


@pytest.fixture(scope="module")
def image2() -> np.ndarray:
    return demo_image(2, size=192)  # two real faces side by side, 192x384


@pytest.fixture(scope="module")
def staged(pipe, speech, image2):
    """Every stage run separately, as the ComfyUI nodes do."""
    audio = pipe.prepare_audio(speech, "pad", frame_num=9)
    plan = pipe.plan(image2.shape[:2], audio.frame_num, AREA)
    faces = pipe.prepare_faces(image2, 2, plan)
    prompts = pipe.encode_prompts("two astronauts talking")
    condition = pipe.build_condition(image2, faces, audio, plan, prompts)
    return {"audio": audio, "plan": plan, "faces": faces, "prompts": prompts, "condition": condition}


class CallLog:
    """Wraps the DiT's ``condition`` and ``forward_conditioned`` to record, per branch row of each
    model call, the text context and audio it received (contexts of batched branches are
    zero-padded to a common length: compare with :func:`same_text`)."""

    def __init__(self, dit: torch.nn.Module):
        self.dit = dit
        self.calls: list[dict] = []
        self._inputs: dict[int, tuple] = {}

    def __enter__(self):
        condition, forward = self.dit.condition, self.dit.forward_conditioned

        def wrapped_condition(context, clip_fea, speakers=(), **kw):
            cond = condition(context, clip_fea, speakers, **kw)
            self._inputs[id(cond)] = (context, [s.audio for s in speakers])
            return cond

        def wrapped_forward(x, t, y, cond):
            context, audio = self._inputs[id(cond)]
            for b in range(cond.branches):
                self.calls.append({"context": context[b:b + 1], "t": t,
                                   "audio": [a if a.shape[0] == 1 else a[b:b + 1] for a in audio]})
            return forward(x, t, y, cond)

        self.dit.condition, self.dit.forward_conditioned = wrapped_condition, wrapped_forward
        return self

    def __exit__(self, *exc):
        del self.dit.condition, self.dit.forward_conditioned  # back to the class methods


def same_text(row: torch.Tensor, context: torch.Tensor) -> bool:
    """``row`` is ``context`` followed by zero rows (padding)."""
    n = context.shape[1]
    return torch.equal(row[:, :n], context) and torch.count_nonzero(row[:, n:]) == 0


def test_stages_build_the_reference_inputs(pipe, staged, image2):
    plan, faces, condition, audio = staged["plan"], staged["faces"], staged["condition"], staged["audio"]
    widths = DemoWidths()
    assert plan == VideoPlan(height=32, width=96, frame_num=9)  # 192x384 image at 64*96 px, multiples of 32
    f_lat, (lat_h, lat_w) = plan.latent_frames, plan.latent_hw
    assert (f_lat, lat_h, lat_w) == (3, 4, 12)
    y = condition.y
    assert y.shape == (1, 20, f_lat, lat_h, lat_w)
    assert torch.equal(y[0, :4, 0], torch.ones(4, lat_h, lat_w))  # mask channels: frame 0 is ones
    assert torch.equal(y[0, :4, 1:], faces.y_mask[:, 1:])  # later frames: the summed face masks
    assert y[0, :4, 1:].amax() > 0 and y[0, :4, 1:].amin() == 0
    assert condition.clip_fea.shape == (1, 257, widths.clip_dim)
    assert len(condition.speakers) == 2
    for i, s in enumerate(condition.speakers):
        assert s.audio.shape == (1, 9, 5, widths.audio_layers, widths.audio_channels)
        assert torch.equal(s.audio[0], audio.features[i])
        assert s.face_clip.shape == (1, 257, widths.clip_dim)
        assert s.token_mask.shape == (1, f_lat, lat_h // 2, lat_w // 2)
    # identity 0 is the left face: its token mask lies in the left half, identity 1's in the right half
    left, right = condition.speakers[0].token_mask[0, 0], condition.speakers[1].token_mask[0, 0]
    assert left[:, : lat_w // 4].sum() > 0 and left[:, lat_w // 4:].sum() == 0
    assert right[:, lat_w // 4:].sum() > 0 and right[:, : lat_w // 4].sum() == 0
    # two identical faces, so their CLIP face tokens match, and differ from the whole-image tokens
    torch.testing.assert_close(condition.speakers[0].face_clip, condition.speakers[1].face_clip)
    assert not torch.allclose(condition.speakers[0].face_clip, condition.clip_fea)
    # y's latent channels: the VAE encoding of [image resized (bicubic, -1..1) to the video size; zeros]
    from anytalker_core.encoders import encode_first_frame_condition
    from anytalker_core.faces import crop_faces

    first = torch.from_numpy(image2).permute(2, 0, 1)[None].float() / 127.5 - 1
    first = torch.nn.functional.interpolate(first, size=(32, 96), mode="bicubic")
    torch.testing.assert_close(y[:, 4:], encode_first_frame_condition(pipe.vae, first, 9))
    # clip_fea: the whole image; face tokens: the square crop of each face
    torch.testing.assert_close(condition.clip_fea, pipe.clip_vision.encode(torch.from_numpy(image2)[None]))
    crop = crop_faces(image2, faces.crop_boxes)[1]
    torch.testing.assert_close(condition.speakers[1].face_clip, pipe.clip_vision.encode(torch.from_numpy(crop)[None]))
    prompts = staged["prompts"]
    assert prompts.context.shape[0] == 1 and prompts.context.shape[2] == widths.text_dim
    assert not torch.equal(prompts.context_null[:, :prompts.context.shape[1]], prompts.context)
    # the default negative prompt is the reference's (longer than the prompt)
    assert prompts.context_null.shape[1] == pipe.encode_prompts("", DEFAULT_NEGATIVE_PROMPT).context_null.shape[1]


def test_single_scale_guidance_uses_negative_prompt_and_zeroed_audio(pipe, staged):
    condition = staged["condition"]
    with CallLog(pipe.dit) as log:
        pipe.denoise(condition, steps=2, guidance=4.5, seed=1)
    assert len(log.calls) == 4  # 2 steps x (cond, uncond)
    cond, uncond = log.calls[0], log.calls[1]
    assert same_text(cond["context"], condition.prompts.context)
    assert same_text(uncond["context"], condition.prompts.context_null)
    assert all(a.abs().sum() > 0 for a in cond["audio"])
    assert all(torch.count_nonzero(a) == 0 for a in uncond["audio"])
    assert int(log.calls[0]["t"].reshape(-1)[0]) == 999  # UniPC starts at 999, as the reference


def test_separate_text_and_audio_guidance_runs_three_branches(pipe, staged):
    condition = staged["condition"]
    with CallLog(pipe.dit) as log:
        pipe.denoise(condition, steps=1, text_guidance=5.0, audio_guidance=3.0, seed=1)
    assert len(log.calls) == 3
    contexts = [c["context"] for c in log.calls]
    zero_audio = [all(torch.count_nonzero(a) == 0 for a in c["audio"]) for c in log.calls]
    # cond: prompt + audio; text_only: prompt, no audio; uncond: negative prompt, no audio
    assert zero_audio == [False, True, True]
    assert same_text(contexts[0], condition.prompts.context) and same_text(contexts[1], condition.prompts.context)
    assert same_text(contexts[2], condition.prompts.context_null)
    with CallLog(pipe.dit) as log:
        pipe.denoise(condition, steps=1, guidance=1.0, seed=1)
    assert len(log.calls) == 1  # scale 1: the conditional branch alone
    with pytest.raises(InputError, match="go together"):
        pipe.denoise(condition, steps=1, text_guidance=5.0)


def test_seed_decides_the_latent(pipe, staged):
    condition = staged["condition"]
    a = pipe.denoise(condition, steps=1, seed=7)
    b = pipe.denoise(condition, steps=1, seed=7)
    c = pipe.denoise(condition, steps=1, seed=8)
    assert a.shape == (1, 16, *[3, 4, 12]) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.allclose(a, c)
    frames = pipe.decode(a)
    assert frames.shape == (9, 32, 96, 3) and frames.dtype == np.uint8


def test_stop_after_step_k_raises_promptly_and_writes_nothing(pipe, speech, image2, tmp_path):
    steps_done: list[int] = []
    k = 2
    request = GenerationRequest(image=image2, audio=speech, steps=6, max_area=AREA, frame_num=9)
    out = tmp_path / "never.mp4"
    with CallLog(pipe.dit) as log, pytest.raises(Interrupted, match="before step 3 of 6"):
        generate_to_file(pipe, request, out, progress=lambda i, n: steps_done.append(i),
                         should_stop=lambda: len(steps_done) >= k)
    assert steps_done == [1, 2]
    assert len(log.calls) == 2 * k  # no model call after the stop request
    assert list(tmp_path.iterdir()) == []  # no mp4, no temp file


def test_stop_before_sampling_skips_the_model(pipe, speech, image2):
    with CallLog(pipe.dit) as log, pytest.raises(Interrupted):  # stops inside (or right after) the audio stage
        pipe.generate(GenerationRequest(image=image2, audio=speech, steps=2, max_area=AREA, frame_num=9),
                      should_stop=lambda: True)
    assert log.calls == []


def test_generate_result(pipe, speech, image2):
    result = pipe.generate(GenerationRequest(image=image2, audio=speech, steps=1, max_area=AREA, frame_num=9,
                                             audio_mode="concat"))
    assert result.frames.shape == (9, 32, 96, 3)
    assert result.fps == 24 and result.sample_rate == 16000
    assert result.audio.shape == (9 * 16000 // 24,)  # the video's duration exactly
    assert result.audio.abs().max() > 0.01  # speech, not silence
    assert result.preview.shape == image2.shape and (result.preview != image2).any()
    assert result.boxes.shape == (2, 4) and result.boxes[0, 0] < result.boxes[1, 0]
    assert set(result.timings) == {"audio", "faces", "text", "condition", "denoise", "decode"}


def test_user_boxes_replace_detection(pipe, speech):
    image = demo_image(2, size=192)
    boxes = [[60, 20, 110, 70], [252, 20, 302, 70]]
    audio = pipe.prepare_audio(speech, "pad", frame_num=9)
    plan = pipe.plan(image.shape[:2], 9, AREA)
    faces = pipe.prepare_faces(image, 2, plan, boxes=boxes)
    np.testing.assert_allclose(faces.boxes_xyxy, np.array(boxes, np.float32))
    assert audio.features.shape[0] == 2


def test_offload_gives_the_same_result(pipe, staged):
    off = AnyTalkerPipeline(pipe.dit, pipe.text_encoder, pipe.clip_vision, pipe.vae, pipe.wav2vec,
                            pipe.face_detector, device="cpu", offload=True)
    condition = staged["condition"]
    torch.testing.assert_close(off.denoise(condition, steps=1, seed=3), pipe.denoise(condition, steps=1, seed=3))
    torch.testing.assert_close(off.encode_prompts("hi").context, pipe.encode_prompts("hi").context)


@pytest.mark.parametrize("change, message", [
    (dict(audio=[]), "got none"),
    (dict(audio=[torch.zeros(100)]), "shorter than 0.1 s"),
    (dict(audio=[torch.full((16000,), float("nan"))]), "NaN"),
    (dict(boxes=[[10, 10, 60, 60]]), "1 face box(es) given for 2 audio track(s)"),
    (dict(audio_mode="mix"), "audio mode 'mix'"),
    (dict(frame_num=10), "4n+1"),
    (dict(image=np.zeros((16, 16, 3), np.uint8)), "too small"),
    (dict(image=np.zeros((64, 64), np.uint8)), "RGB"),
])
def test_bad_requests(pipe, speech, image2, change, message):
    request = dict(image=image2, audio=speech, steps=1, max_area=AREA, frame_num=9)
    request.update(change)
    with CallLog(pipe.dit) as log, pytest.raises(InputError, match=re.escape(message)):
        pipe.generate(GenerationRequest(**request))
    assert log.calls == []


def test_more_voices_than_faces(pipe, speech):
    one_face = demo_image(1, size=192)
    with pytest.raises(InputError, match="found 1 face but 2 audio tracks"):
        pipe.generate(GenerationRequest(image=one_face, audio=speech, steps=1, max_area=AREA, frame_num=9))


def test_condition_checks_its_parts(pipe, staged, image2):
    other = VideoPlan(height=64, width=64, frame_num=9)
    with pytest.raises(InputError, match="latent grid"):
        pipe.build_condition(image2, staged["faces"], staged["audio"], other, staged["prompts"])
    longer = VideoPlan(height=32, width=96, frame_num=13)
    with pytest.raises(InputError, match="cover 9 frames but the video has 13"):
        pipe.build_condition(image2, staged["faces"], staged["audio"], longer, staged["prompts"])


def test_load_image(tmp_path):
    from PIL import Image

    from anytalker_core.generation.pipeline import load_image

    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 0] = 200
    Image.fromarray(rgba).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.shape == (40, 50, 3) and img.dtype == np.uint8 and img[0, 0, 0] == 200
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(InputError, match="not a readable image"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_legacy_afca_dit_runs_in_the_same_pipeline(pipe, staged, tmp_path):
    """A 14B-style (legacy AFCA) DiT takes the same Conditioning; only the model differs."""
    from anytalker_core.model.checkpoint import load_dit
    from anytalker_core.testing.demo import make_demo_dit

    legacy = load_dit(make_demo_dit(tmp_path / "legacy.safetensors", DemoWidths(afca="legacy")))
    assert legacy.config.afca == "legacy"
    other = AnyTalkerPipeline(legacy, pipe.text_encoder, pipe.clip_vision, pipe.vae, pipe.wav2vec)
    latent = other.denoise(staged["condition"], steps=1, seed=2)
    assert latent.shape == (1, 16, 3, 4, 12) and torch.isfinite(latent).all()
    assert not torch.allclose(latent, pipe.denoise(staged["condition"], steps=1, seed=2))


def test_request_accepts_file_paths(pipe, tmp_path):
    from PIL import Image

    Image.fromarray(demo_image(1, size=128)).save(tmp_path / "one.png")
    synthesize_speech("Hello.", tmp_path / "hello.wav")
    result = pipe.generate(GenerationRequest(image=tmp_path / "one.png", audio=[str(tmp_path / "hello.wav")],
                                             steps=1, max_area=32 * 32, frame_num=5))
    assert result.frames.shape == (5, 32, 32, 3)


def test_fp8_block_storage_pipeline(tmp_path_factory, staged, pipe):
    """The DiT loaded with fp8 block weights denoises the same condition close to the full-precision one."""
    paths = build_demo_models(tmp_path_factory.mktemp("models_fp8"))
    fp8 = AnyTalkerPipeline.from_paths(paths, dtype=torch.bfloat16, face_backend="mediapipe",
                                       block_weight_dtype=torch.float8_e4m3fn)
    assert {m.weight.dtype for m in fp8.dit.blocks.modules() if hasattr(m, "scale")} == {torch.float8_e4m3fn}
    ref = pipe.denoise(staged["condition"], steps=2, seed=3)
    out = fp8.denoise(staged["condition"], steps=2, seed=3)
    assert torch.isfinite(out).all() and out.shape == ref.shape
    assert (out - ref).abs().max() / ref.abs().max() < 0.2
