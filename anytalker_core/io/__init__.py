"""Files: weight files, media (image/audio/video), the ComfyUI-style models folder."""
