"""Training runs on CPU with the tiny DiT: loss goes down, exact resume after a crash and after
SIGKILL, stage 2 with real multi-person samples, export to the inference format."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from anytalker_core.errors import InputError
from train.checkpointing import export_checkpoint, find_latest, read_model_state_dict
from train.config import load_toml
from train.encode import write_sample
from train.trainer import Trainer

F_LAT, LAT_H, LAT_W = 2, 8, 8
T = 4 * (F_LAT - 1) + 1
TEXT_DIM = CLIP_DIM = AUDIO_C = 32
AUDIO_L = 2


def make_cache(folder: Path, count: int, identities: int = 1, seed: int = 0, first_frame: bool = True,
               boxes_of: dict[int, list[float]] | None = None) -> Path:
    """``count`` cached samples in the real on-disk format (random encoder outputs and first-frame pixels,
    fixed per sample); ``first_frame=False`` writes the older format without ``first_frame``;
    ``boxes_of[k]`` replaces single-person sample k's face box."""
    g = torch.Generator().manual_seed(seed)
    w_img, h_img = LAT_W * 8, LAT_H * 8
    default = torch.tensor([[16.0 + 64 * i / identities, 8.0, 16.0 + 64 * i / identities + 24 / identities, 48.0]
                            for i in range(identities)])  # fits in half the frame: stage 1 may pair it
    for k in range(count):
        boxes = torch.tensor([boxes_of[k]]) if boxes_of and k in boxes_of else default
        tensors = {
            "latents": torch.randn(16, F_LAT, LAT_H, LAT_W, generator=g),
            "first_frame_latent": torch.randn(16, F_LAT, LAT_H, LAT_W, generator=g),
            "audio_features": torch.randn(identities, T, AUDIO_L, AUDIO_C, generator=g),
            "face_boxes": boxes[:, None].expand(identities, T, 4).clone(),
            "global_face_box": boxes,
            "face_clip_tokens": torch.randn(identities, 257, CLIP_DIM, generator=g),
            "clip_tokens": torch.randn(257, CLIP_DIM, generator=g),
            "text_embedding": torch.randn(6, TEXT_DIM, generator=g),
        }
        if first_frame:
            tensors["first_frame"] = torch.randint(0, 256, (h_img, w_img, 3), generator=g, dtype=torch.uint8)
        meta = {"id": f"s{k}", "fps": 24, "frames": T, "height": h_img, "width": w_img, "latent_frames": F_LAT,
                "latent_height": LAT_H, "latent_width": LAT_W, "num_identities": identities, "caption": "test"}
        write_sample(folder / "samples", f"s{k}", tensors, meta)
    return folder


def tiny_clip_vision(folder: Path) -> Path:
    """The tiny frozen CLIP vision file stage 1 encodes side-by-side first frames with (width CLIP_DIM)."""
    from anytalker_core.encoders import make_tiny_clip_vision

    path = folder / "clip_vision_h.safetensors"
    return path if path.is_file() else make_tiny_clip_vision(path, hidden_size=CLIP_DIM)


def write_config(path: Path, data: Path, run: Path, **extra) -> Path:
    """A fit config for the tiny DiT; ``clip_vision`` defaults to a tiny CLIP file beside the config."""
    settings = dict(stage=1, learning_rate=2e-3, warmup_steps=2, max_steps=10, batch_size=1, mixed_precision="no",
                    num_workers=0, save_every=3, log_every=1, two_person_prob=0.5, text_dropout=0.1,
                    audio_dropout=0.1, timestep_sampler="uniform", shift=3.0, seed=11, export_at_end=False)
    settings.update(extra)
    settings.setdefault("clip_vision", str(tiny_clip_vision(path.parent)))
    lines = [f'data = ["{data}"]', f'run_dir = "{run}"']
    for k, v in settings.items():
        lines.append(f"{k} = {json.dumps(v)}")
    lines += ["[model]", "tiny = true", "gradient_checkpointing = false"]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("cache") / "c", 2)


def test_stage1_loss_goes_down(cache: Path, tmp_path: Path):
    from anytalker_core.encoders import make_tiny_vae
    from anytalker_core.io.media import read_video

    vae = make_tiny_vae(tmp_path / "wan_2.1_vae.safetensors")
    cfg = load_toml(write_config(tmp_path / "s1.toml", cache, tmp_path / "run", max_steps=30, save_every=30,
                                 learning_rate=1e-2, text_dropout=0.0, audio_dropout=0.0, sample_every=30,
                                 sample_steps=2, sample_vae=str(vae)), "fit")
    losses = Trainer(cfg).run()
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.85 * first, f"loss did not go down: first {first:.4f}, last {last:.4f}"
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows[:3]] == pytest.approx([5e-3, 1e-2, 1e-2])  # linear warm-up over 2 steps
    assert any(r["two_person"] for r in rows) and any(not r["two_person"] for r in rows)
    # the validation hook sampled the first cached sample with the trained weights and decoded it
    latent = tmp_path / "run" / "samples" / "step-00000030_s0.safetensors"
    assert latent.is_file()
    clip = read_video(latent.with_suffix(".mp4"))
    assert clip.frames.shape == (T, LAT_H * 8, LAT_W * 8, 3)


def test_crash_during_save_then_resume_reproduces_the_uninterrupted_losses(cache: Path, tmp_path: Path,
                                                                          monkeypatch):
    """A crash while checkpoint 6 is being written leaves checkpoint 3 as the newest complete one; the
    resumed run repeats steps 4..8 with exactly the losses of an uninterrupted run."""
    import train.checkpointing as ckpt_mod

    full = Trainer(load_toml(write_config(tmp_path / "a.toml", cache, tmp_path / "full", max_steps=8), "fit")).run()

    # two DataLoader workers prefetch ahead: the saved data position must still be the consumed one
    cfg = load_toml(write_config(tmp_path / "b.toml", cache, tmp_path / "crash", max_steps=8, num_workers=2), "fit")
    original = ckpt_mod.write_json_atomic

    def crash_while_saving_step_6(path, data):
        if path.name == "trainer_state.json" and data["step"] == 6:
            raise RuntimeError("simulated crash during save")
        return original(path, data)

    monkeypatch.setattr(ckpt_mod, "write_json_atomic", crash_while_saving_step_6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg).run()
    monkeypatch.setattr(ckpt_mod, "write_json_atomic", original)
    root = tmp_path / "crash" / "checkpoints"
    assert (root / ".tmp-step-00000006").is_dir() and not (root / "step-00000006").exists()
    assert find_latest(tmp_path / "crash").name == "step-00000003"
    resumed = Trainer(cfg).run()
    assert len(resumed) == 5  # steps 4..8
    assert torch.allclose(torch.tensor(resumed), torch.tensor(full[3:]), atol=1e-6, rtol=0)
    a = read_model_state_dict(find_latest(tmp_path / "full"))
    b = read_model_state_dict(find_latest(tmp_path / "crash"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not (root / ".tmp-step-00000006").exists()  # the stale temp folder was replaced and renamed


def test_partial_initialisation_from_a_checkpoint(tmp_path: Path):
    """Stage 1 starts from Wan2.1 I2V weights without AFCA layers: matching tensors load, the rest stay new."""
    from anytalker_core.model.checkpoint import save_dit
    from anytalker_core.model.config import AnyTalkerConfig
    from anytalker_core.model.dit import AnyTalkerDiT
    from safetensors.torch import load_file, save_file

    from train.config import ModelSection
    from train.model import build_model

    source = AnyTalkerDiT(AnyTalkerConfig.tiny())
    full = tmp_path / "full.safetensors"
    save_dit(source, full)
    base = {k: v for k, v in load_file(str(full)).items() if "audio" not in k and "face" not in k}
    wan_like = tmp_path / "wan_i2v.safetensors"
    save_file(base, str(wan_like))
    model = build_model(ModelSection(tiny=True, init_checkpoint=str(wan_like)), seed=123)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in base.items())
    new = [k for k in sd if k not in base]
    assert new and not any(torch.equal(sd[k], source.state_dict()[k]) for k in new if sd[k].dim() >= 2)
    assert all(p.requires_grad for p in model.parameters()) and model.training


def test_initialisation_from_a_checkpoint_of_another_size_names_it(tmp_path: Path):
    from anytalker_core.model.checkpoint import save_dit
    from anytalker_core.model.config import AnyTalkerConfig
    from anytalker_core.model.dit import AnyTalkerDiT

    from train.config import ModelSection
    from train.model import build_model

    wider = save_dit(AnyTalkerDiT(AnyTalkerConfig.tiny(dim=64, ffn_dim=128)), tmp_path / "wider.safetensors")
    with pytest.raises(InputError, match=r"init_checkpoint '.*wider.safetensors': \d+ tensor\(s\) have the model's "
                                         r"names but other shapes \(.*vs model.*config_json"):
        build_model(ModelSection(tiny=True, init_checkpoint=str(wider)), seed=1)


def test_sharded_initialisation_reads_the_checkpoint_and_draws_the_new_layers(tmp_path: Path, monkeypatch):
    """FSDP2's meta-device build (one process here): the DiT is constructed without memory (every parameter on
    the meta device; only the shards are then allocated: test_train_fsdp.py counts them per rank), checkpoint
    tensors land exactly, missing ones get PyTorch's default init ranges; a checkpoint of another size is
    refused the same way as for DDP."""
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file

    from anytalker_core.model.checkpoint import save_dit
    from anytalker_core.model.config import AnyTalkerConfig
    from anytalker_core.model.dit import AnyTalkerDiT

    from train.parallel import build_sharded_model, ensure_process_group

    source = save_dit(AnyTalkerDiT(AnyTalkerConfig.tiny()), tmp_path / "full.safetensors")
    base = {k: v for k, v in load_file(str(source)).items() if "audio" not in k}
    save_file(base, str(tmp_path / "wan.safetensors"))
    built_on = []
    init = AnyTalkerDiT.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built_on.extend({p.device.type for p in self.parameters()})

    monkeypatch.setattr(AnyTalkerDiT, "__init__", recording_init)
    ensure_process_group(tmp_path)
    try:
        model = build_sharded_model(AnyTalkerConfig.tiny(), str(tmp_path / "wan.safetensors"), seed=3,
                                    device=torch.device("cpu"), gradient_checkpointing=False)
        assert built_on == ["meta"]  # constructed once, holding no memory
        monkeypatch.setattr(AnyTalkerDiT, "__init__", init)
        sd = {k: v.full_tensor() for k, v in model.state_dict().items()}
        assert all(torch.equal(sd[k], v.float()) for k, v in base.items())
        new = {k: v for k, v in sd.items() if k not in base}
        assert new
        for k, v in new.items():
            if k.endswith("weight") and v.dim() == 2:  # Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                bound = 1 / v.shape[1] ** 0.5
                assert v.abs().max() <= bound and v.std() > 0.3 * bound, k
        wider = save_dit(AnyTalkerDiT(AnyTalkerConfig.tiny(dim=64, ffn_dim=128)), tmp_path / "wider.safetensors")
        with pytest.raises(InputError, match="other shapes"):
            build_sharded_model(AnyTalkerConfig.tiny(), str(wider), seed=3, device=torch.device("cpu"),
                                gradient_checkpointing=False)
    finally:
        dist.destroy_process_group()


def test_sigkill_then_resume(cache: Path, tmp_path: Path):
    """A real ``kill -9`` in the middle of training (possibly mid-save) loses nothing but the steps since
    the last complete checkpoint; the resumed run continues the uninterrupted loss curve."""
    reference = Trainer(load_toml(write_config(tmp_path / "ref.toml", cache, tmp_path / "ref", max_steps=10,
                                               save_every=2), "fit")).run()
    config = write_config(tmp_path / "k.toml", cache, tmp_path / "killed", max_steps=10, save_every=2)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "train.cli", "fit", str(config), "--max-steps", "100000"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    ckpt = find_latest(tmp_path / "killed")
    done = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert 2 <= done < 10
    resumed = Trainer(load_toml(config, "fit")).run()
    assert len(resumed) == 10 - done
    assert torch.allclose(torch.tensor(resumed), torch.tensor(reference[done:]), atol=1e-6, rtol=0)
    logged = [json.loads(l)["step"] for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 11))  # steps redone after the kill are logged once
    with pytest.raises(InputError, match="already holds checkpoints"):
        Trainer(load_toml(config, "fit"), resume=False).run()


def test_stage2_multi_person_and_export(tmp_path: Path):
    from anytalker_core.model.checkpoint import load_dit
    from anytalker_core.model.speaker import Speaker

    data = make_cache(tmp_path / "multi", 2, identities=2, seed=3)
    cfg = load_toml(write_config(tmp_path / "s2.toml", data, tmp_path / "run2", stage=2, max_steps=2, save_every=2,
                                 learning_rate=5e-6, export_at_end=True, gradient_accumulation_steps=2), "fit")
    losses = Trainer(cfg).run()
    assert len(losses) == 2
    state = json.loads((find_latest(tmp_path / "run2") / "trainer_state.json").read_text())
    assert (state["step"], state["micro_step"]) == (2, 4)  # 2 micro-batches per optimiser step
    rows = [json.loads(l) for l in (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()]
    assert not any(r["two_person"] for r in rows)  # stage 2 never concatenates
    exported = tmp_path / "run2" / "anytalker_dit.safetensors"
    assert exported.is_file()
    # the CLI export of the same checkpoint, loaded the way inference loads a DiT
    out = tmp_path / "cli_export.safetensors"
    result = subprocess.run([sys.executable, "-m", "train.cli", "export", str(tmp_path / "run2"), str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    model = load_dit(out)
    trained = read_model_state_dict(find_latest(tmp_path / "run2"))
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained)
    g = torch.Generator().manual_seed(0)
    speakers = [Speaker(torch.randn(1, T, 5, AUDIO_L, AUDIO_C, generator=g), torch.randn(1, 257, CLIP_DIM, generator=g),
                        torch.rand(1, F_LAT, LAT_H // 2, LAT_W // 2, generator=g)) for _ in range(2)]
    with torch.no_grad():
        v = model(torch.randn(1, 16, F_LAT, LAT_H, LAT_W, generator=g), torch.tensor([500.0]),
                  torch.randn(1, 6, TEXT_DIM, generator=g), torch.randn(1, 257, CLIP_DIM, generator=g),
                  torch.randn(1, 20, F_LAT, LAT_H, LAT_W, generator=g), speakers)
    assert v.shape == (1, 16, F_LAT, LAT_H, LAT_W) and torch.isfinite(v).all()
    with pytest.raises(Exception, match="safetensors"):
        export_checkpoint(tmp_path / "run2", tmp_path / "bad.pth")


def test_should_stop_saves_and_interrupts(cache: Path, tmp_path: Path):
    from anytalker_core.errors import Interrupted

    cfg = load_toml(write_config(tmp_path / "i.toml", cache, tmp_path / "run", max_steps=4, save_every=100), "fit")
    trainer = Trainer(cfg, should_stop=lambda: trainer.step >= 2)
    with pytest.raises(Interrupted, match="step 2"):
        trainer.run()
    assert find_latest(tmp_path / "run").name == "step-00000002"
    assert len(Trainer(cfg).run()) == 2  # resumes at step 2, trains 3 and 4


def test_two_person_batches_encode_their_first_frame_with_the_frozen_clip(cache: Path, tmp_path: Path,
                                                                         monkeypatch):
    """Every two-person step runs the frozen CLIP model once on the side-by-side first frames."""
    from anytalker_core.encoders.clip_vision import ClipVisionEncoder

    calls = []
    original = ClipVisionEncoder.encode

    def spy(self, images):
        out = original(self, images)
        calls.append((tuple(images.shape), images.dtype, self.dtype,
                      any(p.requires_grad for p in self.model.parameters()), self.model.training))
        return out

    monkeypatch.setattr(ClipVisionEncoder, "encode", spy)
    # (mixed_precision "no": accelerate's process-wide state forbids switching; bf16 runs in the torchrun test)
    cfg = load_toml(write_config(tmp_path / "c.toml", cache, tmp_path / "run", max_steps=3, two_person_prob=1.0),
                    "fit")
    Trainer(cfg).run()
    assert calls == [((1, LAT_H * 8, LAT_W * 8, 3), torch.uint8, torch.float32, False, False)] * 3


def test_stage1_edge_face_trains_and_too_wide_face_is_named(tmp_path: Path):
    """A face at the frame's edge is paired with a crop that holds it (the old centre crop made it a
    zero-width box and raised inside the data loader); a face wider than half the frame is never paired
    and named, with the reason, in the log and RUN/pairing_report.json."""
    w = LAT_W * 8
    data = make_cache(tmp_path / "c", 4, boxes_of={0: [0.0, 8.0, 20.0, 48.0], 1: [w - 18.0, 8.0, w, 48.0],
                                                   3: [2.0, 4.0, w - 20.0, 60.0]})
    run = tmp_path / "run"
    cfg = load_toml(write_config(tmp_path / "e.toml", data, run, max_steps=4, save_every=4, two_person_prob=1.0),
                    "fit")
    losses = Trainer(cfg).run()
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    report = json.loads((run / "pairing_report.json").read_text())
    assert report["pairable"] == 3
    assert [(s["id"], s["reason"]) for s in report["skipped"]] == [("s3", "face_wider_than_half")]
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["two_person"] for r in rows)  # s0 (left edge) and s1 (right edge) were paired


def test_two_person_mode_needs_clip_vision_and_stage2_does_not(cache: Path, tmp_path: Path):
    with pytest.raises(InputError, match="two_person_prob = 0.5.*needs 'clip_vision'"):
        load_toml(write_config(tmp_path / "a.toml", cache, tmp_path / "a", clip_vision=""), "fit")
    # no two-person batches: no CLIP at training time
    for name, extra in (("b", dict(two_person_prob=0.0)), ("c", dict(stage=2))):
        cfg = load_toml(write_config(tmp_path / f"{name}.toml", cache, tmp_path / name, clip_vision="",
                                     max_steps=1, **extra), "fit")
        trainer = Trainer(cfg)
        assert len(trainer.run()) == 1 and trainer.clip is None


def test_cache_without_first_frame_fails_at_start_up(tmp_path: Path):
    old = make_cache(tmp_path / "old", 2, first_frame=False)
    cfg = load_toml(write_config(tmp_path / "o.toml", old, tmp_path / "run"), "fit")
    with pytest.raises(InputError, match="prepared without 'first_frame'.*re-run 'anytalker-train prepare'"):
        Trainer(cfg).run()
    # stage 2 (no two-person mode) still trains on it
    cfg = load_toml(write_config(tmp_path / "s2.toml", old, tmp_path / "run2", stage=2, max_steps=1), "fit")
    assert len(Trainer(cfg).run()) == 1
