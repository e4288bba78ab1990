"""Where model files are looked for (ComfyUI models/ layout), and the one message for every missing file."""

from __future__ import annotations

from pathlib import Path

import pytest

from anytalker_core.errors import MissingModelError
from anytalker_core.io.model_paths import MODEL_SPECS, ROLES, find_model, resolve_model_paths


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def full_set(root: Path) -> dict[str, Path]:
    files = {
        "dit": touch(root / "diffusion_models" / "AnyTalker-1.3B.safetensors"),
        "text_encoder": touch(root / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
        "clip_vision": touch(root / "clip_vision" / "clip_vision_h.safetensors"),
        "vae": touch(root / "vae" / "wan_2.1_vae.safetensors"),
        "wav2vec": root / "audio_encoders" / "wav2vec2-base-960h",
    }
    touch(files["wav2vec"] / "config.json", b"{}")
    return files


def test_comfyui_layout_is_found(tmp_path):
    files = full_set(tmp_path)
    # distractors a ComfyUI models folder really holds
    touch(tmp_path / "diffusion_models" / "wan2.1_i2v_480p_14B_fp16.safetensors")
    touch(tmp_path / "vae" / "ae.safetensors")
    touch(tmp_path / "clip_vision" / "clip_vision_g.safetensors")
    touch(tmp_path / "text_encoders" / "t5xxl_fp16.safetensors")
    paths = resolve_model_paths(tmp_path)
    for role in ROLES:
        assert getattr(paths, role) == files[role], role
    assert paths.dit_config is None and paths.insightface_root is None


def test_released_pth_config_beside_and_insightface(tmp_path):
    full_set(tmp_path)
    (tmp_path / "diffusion_models" / "AnyTalker-1.3B.safetensors").unlink()
    dit = touch(tmp_path / "diffusion_models" / "1_3B-single-v1.pth")
    config = touch(tmp_path / "diffusion_models" / "1_3B-single-v1.json", b"{}")
    (tmp_path / "insightface" / "models" / "antelopev2").mkdir(parents=True)
    paths = resolve_model_paths(tmp_path)
    assert paths.dit == dit and paths.dit_config == config
    assert paths.insightface_root == tmp_path / "insightface"


def test_safetensors_preferred_and_case_insensitive(tmp_path):
    touch(tmp_path / "vae" / "Wan_2.1_VAE.pth")
    st = touch(tmp_path / "vae" / "Wan_2.1_VAE.safetensors")
    touch(tmp_path / "vae" / ".wan_2.1_vae.safetensors.tmp")  # hidden partial download: ignored
    assert find_model(tmp_path, "vae") == st
    assert find_model(tmp_path, "dit") is None  # folder absent


def test_explicit_paths_override_the_search(tmp_path):
    full_set(tmp_path / "models")
    mine = touch(tmp_path / "elsewhere" / "my_dit.safetensors")
    cfg = touch(tmp_path / "elsewhere" / "cfg.json", b"{}")
    paths = resolve_model_paths(tmp_path / "models", {"dit": mine, "vae": None}, dit_config=cfg)
    assert paths.dit == mine and paths.dit_config == cfg
    assert paths.vae.name == "wan_2.1_vae.safetensors"


def test_every_missing_file_in_one_message(tmp_path):
    touch(tmp_path / "clip_vision" / "clip_vision_h.safetensors")
    (tmp_path / "audio_encoders" / "wav2vec2-base-960h").mkdir(parents=True)  # empty folder: not a model
    with pytest.raises(MissingModelError) as info:
        resolve_model_paths(tmp_path, {"vae": tmp_path / "nope.safetensors"},
                            dit_config=tmp_path / "missing.json")
    message = str(info.value)
    assert message.startswith("5 model file(s) missing")
    for role in ("dit", "text_encoder", "wav2vec"):
        spec = MODEL_SPECS[role]
        assert f"{tmp_path / spec.folder}/{spec.suggested}" in message
        assert spec.option in message
    assert f"--vae {tmp_path / 'nope.safetensors'}: does not exist" in message
    assert "--dit-config" in message
    assert f"{tmp_path / 'clip_vision'}/" not in message  # present, so not listed
    assert "--demo" in message


def test_default_models_dir_from_environment(tmp_path, monkeypatch):
    full_set(tmp_path / "m")
    monkeypatch.setenv("ANYTALKER_MODELS_DIR", str(tmp_path / "m"))
    assert resolve_model_paths().vae == tmp_path / "m" / "vae" / "wan_2.1_vae.safetensors"


def test_unknown_role_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="unknown model roles"):
        resolve_model_paths(tmp_path, {"unet": tmp_path})
