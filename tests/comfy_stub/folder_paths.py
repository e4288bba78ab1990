"""Stand-in of ComfyUI's ``folder_paths``: model folders under ``models_dir`` (tests set it)."""

from __future__ import annotations

import os

models_dir = os.path.join(os.getcwd(), "models")
output_directory = os.path.join(os.getcwd(), "output")
EXTENSIONS = {".safetensors", ".pth", ".pt", ".ckpt", ".bin", ".pkl", ".sft"}
CORE_FOLDERS = ("checkpoints", "diffusion_models", "text_encoders", "clip_vision", "vae", "audio_encoders",
                "model_patches", "loras")
_added: dict[str, list[str]] = {}  # folders registered by packs: (paths, no extension filter) as in ComfyUI


def get_folder_paths(folder_name: str) -> list[str]:
    if folder_name in CORE_FOLDERS:
        return [os.path.join(models_dir, folder_name)] + _added.get(folder_name, [])
    return list(_added[folder_name])  # KeyError for an unregistered folder, as in ComfyUI


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    paths = _added.setdefault(folder_name, [])
    if full_folder_path not in paths:
        paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)


def get_filename_list(folder_name: str) -> list[str]:
    names = set()
    for root in get_folder_paths(folder_name):
        for dirpath, _, files in os.walk(root, followlinks=True):
            for f in files:
                if folder_name not in CORE_FOLDERS or os.path.splitext(f)[1].lower() in EXTENSIONS:
                    names.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(names)


def get_full_path(folder_name: str, filename: str) -> str | None:
    for root in get_folder_paths(folder_name):
        path = os.path.join(root, filename)
        if os.path.isfile(path):
            return path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def get_output_directory() -> str:
    return output_directory
