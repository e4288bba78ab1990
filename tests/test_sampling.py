"""Sampling: solver set-up (golden fixture), Euler, guidance, the loop's callbacks, noise, sizes."""

from __future__ import annotations

import pytest
import torch

from anytalker_core.errors import InputError, Interrupted
from anytalker_core.parity import run_fixture
from anytalker_core.sampling import (
    COND,
    TEXT_ONLY,
    UNCOND,
    Guidance,
    default_shift,
    frames_for_duration,
    latent_frames,
    latent_size,
    make_noise,
    make_scheduler,
    per_branch,
    sample,
    snap_frame_count,
    target_size,
    video_frames,
)

SHAPE = (1, 16, 3, 4, 6)


# ---------------------------------------------------------------- schedulers


def test_scheduler_fixture_parity(fixtures):
    results = run_fixture(fixtures / "scheduler.json")
    failed = [r.line() for r in results if not r.passed]
    assert not failed, "\n".join(failed)
    # 3 settings x 2 solvers x (timesteps, sigmas, final, trajectory) + 3 DPM++ input sigmas
    assert len(results) == 27


@pytest.mark.parametrize("name, first", [("unipc", 999), ("dpmpp", 1000), ("euler", 1000)])
def test_scheduler_layout(name, first):
    sch = make_scheduler(name, 12, 3.0)
    assert sch.timesteps.dtype == torch.int64 and sch.timesteps.shape == (12,)
    assert sch.sigmas.dtype == torch.float32 and sch.sigmas.shape == (13,)
    assert int(sch.timesteps[0]) == first
    assert float(sch.sigmas[-1]) == 0.0
    assert torch.all(sch.sigmas[1:] < sch.sigmas[:-1])  # strictly decreasing
    # timesteps are sigma * 1000 truncated (from float64 sigmas; these are float32)
    gap = sch.sigmas[:-1].double() * 1000 - sch.timesteps.double()
    assert torch.all(gap > -1e-3) and torch.all(gap < 1)


def test_scheduler_shift_moves_sigmas_up():
    low, high = make_scheduler("dpmpp", 10, 1.0), make_scheduler("dpmpp", 10, 5.0)
    assert torch.allclose(low.sigmas[:-1], torch.linspace(1, 0, 11)[:-1], atol=1e-7)  # shift 1 = linear
    assert torch.all(high.sigmas[1:-1] > low.sigmas[1:-1])


def test_scheduler_validation():
    with pytest.raises(InputError, match="unipc, dpmpp, euler"):
        make_scheduler("ddim", 10, 3.0)
    with pytest.raises(InputError, match="steps"):
        make_scheduler("unipc", 0, 3.0)
    with pytest.raises(InputError, match="steps"):
        make_scheduler("unipc", 2.5, 3.0)
    with pytest.raises(InputError, match="shift"):
        make_scheduler("unipc", 10, 0.0)
    with pytest.raises(InputError, match="shift"):
        make_scheduler("euler", 10, float("nan"))
    assert make_scheduler("DPM++", 4, 3.0).name == "dpmpp"
    assert make_scheduler("unipc", 1, 3.0).timesteps.shape == (1,)


def test_default_shift():
    assert default_shift(480, 832) == 3.0
    assert default_shift(608, 608) == 3.0
    assert default_shift(720, 1280) == 5.0
    with pytest.raises(InputError):
        default_shift(0, 832)


def _straight_path(solver: str, steps: int, shift: float):
    """Exact velocity of the straight path from `noise` to `x0`: v(x, sigma) = (x - x0) / sigma."""
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = make_noise(SHAPE, seed=2)
    sch = make_scheduler(solver, steps, shift)
    sigma_of = {int(t): float(s) for t, s in zip(sch.timesteps, sch.sigmas[:-1])}

    def velocity(latent, t, branch):
        return (latent - x0) / sigma_of[int(t)]

    start = (1 - sch.sigmas[0]) * x0 + sch.sigmas[0] * noise  # the path at the first sigma
    return sample(per_branch(velocity), start, sch, Guidance(1.0)), x0


@pytest.mark.parametrize("steps, shift", [(1, 1.0), (7, 3.0), (20, 5.0)])
def test_euler_lands_on_target_of_linear_path(steps, shift):
    out, x0 = _straight_path("euler", steps, shift)
    assert torch.allclose(out, x0, atol=1e-5)


def test_euler_constant_velocity_is_exact():
    # v = noise - x0 everywhere: any step sizes integrate it exactly from sigma 1 to 0.
    x0 = torch.full(SHAPE, 0.25)
    noise = make_noise(SHAPE, seed=3)
    sch = make_scheduler("euler", 9, 3.0)
    out = sample(per_branch(lambda x, t, b: noise - x0), noise, sch, Guidance(1.0))
    assert torch.allclose(out, x0, atol=1e-6)


@pytest.mark.parametrize("solver", ["unipc", "dpmpp"])
def test_data_prediction_solvers_land_on_linear_path_target(solver):
    out, x0 = _straight_path(solver, 8, 3.0)
    assert torch.allclose(out, x0, atol=1e-4)


# ---------------------------------------------------------------- guidance


class CountingModel:
    """Constant prediction per branch; records every requested branch tuple."""

    values = {COND: 3.0, TEXT_ONLY: 2.0, UNCOND: 1.0}

    def __init__(self):
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, latent, t, branches):
        self.calls.append(tuple(branches))
        return [torch.full_like(latent, self.values[b]) for b in branches]


@pytest.mark.parametrize("guidance, branches", [
    (Guidance(4.5), (COND, UNCOND)),
    (Guidance(1.0), (COND,)),
    (Guidance(4.5, 2.0), (COND, TEXT_ONLY, UNCOND)),
    (Guidance(3.0, 3.0), (COND, UNCOND)),
    (Guidance(1.0, 2.5), (COND, TEXT_ONLY)),
    (Guidance(1.0, 1.0), (COND,)),
])
def test_guidance_branches_and_call_counts(guidance, branches):
    assert guidance.branches == branches
    model = CountingModel()
    sample(model, make_noise(SHAPE, 0), make_scheduler("euler", 5, 3.0), guidance)
    assert model.calls == [branches] * 5
    assert guidance.calls_per_step == len(branches)


@pytest.mark.parametrize("text, audio", [(4.5, None), (1.0, None), (4.5, 2.0), (1.0, 2.5), (3.0, 0.0), (0.0, None)])
def test_guidance_formula(text, audio):
    g = torch.Generator().manual_seed(5)
    preds = {b: torch.randn(4, generator=g) for b in (COND, TEXT_ONLY, UNCOND)}
    a = text if audio is None else audio
    # the 3-branch formula; with audio_scale None it reduces to the reference's (text_only == cond)
    text_only = preds[COND] if audio is None else preds[TEXT_ONLY]
    expected = preds[UNCOND] + text * (text_only - preds[UNCOND]) + a * (preds[COND] - text_only)
    guidance = Guidance(text, audio)
    got = guidance.combine({b: preds[b] for b in guidance.branches})
    assert torch.allclose(got, expected, atol=1e-6)


def test_guidance_single_scale_matches_reference_expression_exactly():
    g = torch.Generator().manual_seed(6)
    cond, uncond = torch.randn(100, generator=g), torch.randn(100, generator=g)
    got = Guidance(4.5).combine({COND: cond, UNCOND: uncond})
    assert torch.equal(got, uncond + 4.5 * (cond - uncond))


def test_guidance_validation():
    with pytest.raises(InputError, match="text_scale"):
        Guidance(-1.0)
    with pytest.raises(InputError, match="audio_scale"):
        Guidance(4.5, float("inf"))
    with pytest.raises(InputError, match="missing"):
        Guidance(4.5).combine({COND: torch.zeros(1)})


def test_guided_sample_equals_sampling_the_guided_field():
    # Constant branch outputs: the guided velocity is 1 + 4.5 * (3 - 1) = 10 at every step.
    noise = make_noise(SHAPE, 7)
    got = sample(CountingModel(), noise, make_scheduler("euler", 6, 3.0), Guidance(4.5))
    assert torch.allclose(got, noise - 10.0, atol=1e-5)  # sum of (sigma_next - sigma) is -1


# ---------------------------------------------------------------- the loop


def test_progress_sequence_and_on_step():
    seen, steps_seen = [], []
    sch = make_scheduler("unipc", 6, 3.0)
    out = sample(CountingModel(), make_noise(SHAPE, 0), sch, Guidance(4.5),
                 progress=lambda i, n: seen.append((i, n)), on_step=lambda i, x: steps_seen.append((i, x.clone())))
    assert seen == [(i, 6) for i in range(1, 7)]
    assert [i for i, _ in steps_seen] == list(range(6))
    assert torch.equal(steps_seen[-1][1], out)


def test_interrupt_raises_before_the_next_step():
    model = CountingModel()
    done = []

    def stop():
        return len(done) >= 3

    with pytest.raises(Interrupted, match="step 4 of 10"):
        sample(model, make_noise(SHAPE, 0), make_scheduler("unipc", 10, 3.0), Guidance(4.5),
               progress=lambda i, n: done.append(i), should_stop=stop)
    assert len(model.calls) == 3  # no model call after the stop request


def test_interrupt_before_first_step_calls_nothing():
    model = CountingModel()
    with pytest.raises(Interrupted):
        sample(model, make_noise(SHAPE, 0), make_scheduler("dpmpp", 4, 3.0), should_stop=lambda: True)
    assert model.calls == []


def test_latents_stay_float32_with_a_half_precision_model():
    dtypes = []

    def bf16_model(latent, t, branch):
        dtypes.append((latent.dtype, t.dtype, tuple(t.shape)))
        return (0.3 * latent.to(torch.bfloat16)).to(torch.bfloat16)

    out = sample(per_branch(bf16_model), make_noise(SHAPE, 0, dtype=torch.bfloat16),
                 make_scheduler("unipc", 3, 3.0), Guidance(4.5))
    assert out.dtype == torch.float32
    assert set(dtypes) == {(torch.float32, torch.int64, (1,))}


def test_scheduler_reuse_and_seed_reproducibility():
    sch = make_scheduler("unipc", 5, 3.0)
    model = per_branch(lambda x, t, b: 0.3 * x + (0.1 if b == COND else 0.0))
    first = sample(model, make_noise(SHAPE, 42), sch, Guidance(4.5))
    second = sample(model, make_noise(SHAPE, 42), sch, Guidance(4.5))  # same scheduler object again
    other = sample(model, make_noise(SHAPE, 43), sch, Guidance(4.5))
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)


def test_denoiser_output_checks():
    bad_shape = per_branch(lambda x, t, b: x[..., :2])
    with pytest.raises(RuntimeError, match="shape"):
        sample(bad_shape, make_noise(SHAPE, 0), make_scheduler("euler", 2, 3.0))
    with pytest.raises(RuntimeError, match="predictions"):
        sample(lambda x, t, bs: [x], make_noise(SHAPE, 0), make_scheduler("euler", 2, 3.0))


def test_make_noise():
    a = make_noise((2, 3, 4), seed=123)
    assert a.dtype == torch.float32 and a.shape == (2, 3, 4)
    assert torch.equal(a, make_noise((2, 3, 4), seed=123))
    assert torch.equal(a, torch.randn((2, 3, 4), generator=torch.Generator().manual_seed(123)))
    assert not torch.equal(a, make_noise((2, 3, 4), seed=124))
    assert torch.equal(make_noise((2, 3, 4), seed=123, dtype=torch.bfloat16), a.to(torch.bfloat16))
    assert make_noise((1,), seed=2**64 - 1).shape == (1,)
    for bad in (-1, 2**64, 1.5, True):
        with pytest.raises(InputError, match="seed"):
            make_noise((2,), seed=bad)
    with pytest.raises(InputError, match="shape"):
        make_noise((2, 0), seed=1)


# ---------------------------------------------------------------- sizes and frames


@pytest.mark.parametrize("image, expected", [
    ((512, 512), (608, 608)),
    ((480, 832), (480, 832)),  # the reference's float math gives 448x832 here
    ((832, 480), (832, 480)),
    ((1080, 1920), (448, 832)),
    ((1920, 1080), (832, 448)),
    ((1024, 768), (704, 544)),
    ((512, 1024), (416, 864)),
])
def test_target_size_examples(image, expected):
    h, w = target_size(*image)
    assert (h, w) == expected
    assert h % 32 == 0 and w % 32 == 0 and h * w <= 832 * 480


def test_target_size_keeps_aspect_and_area():
    for ih, iw in [(300, 1000), (1000, 300), (777, 555), (64, 64), (2000, 1999)]:
        h, w = target_size(ih, iw)
        assert h * w <= 832 * 480
        assert abs(h / w - ih / iw) / (ih / iw) < 0.15
        assert h * w > 0.75 * 832 * 480
    assert target_size(720, 1280, max_area=720 * 1280) == (704, 1280)
    assert target_size(512, 512, max_area=512 * 512, multiple=16) == (512, 512)


def test_target_size_validation():
    with pytest.raises(InputError, match="multiple of 16"):
        target_size(512, 512, multiple=24)
    with pytest.raises(InputError, match="image height"):
        target_size(0, 512)
    with pytest.raises(InputError, match="max_area"):
        target_size(512, 512, max_area=100)


def test_frame_helpers():
    assert latent_frames(81) == 21 and latent_frames(1) == 1 and latent_frames(9) == 3
    assert video_frames(21) == 81 and video_frames(1) == 1
    assert all(video_frames(latent_frames(4 * n + 1)) == 4 * n + 1 for n in range(30))
    with pytest.raises(InputError, match="4n\\+1"):
        latent_frames(80)
    assert snap_frame_count(80) == 77 and snap_frame_count(81) == 81 and snap_frame_count(1) == 1
    assert frames_for_duration(3.4, 24) == 81  # ceil(81.6) = 82 -> 81
    assert frames_for_duration(1.0, 24) == 21  # 24 -> 21
    assert latent_size(480, 832) == (60, 104)
    with pytest.raises(InputError):
        frames_for_duration(0.0)
