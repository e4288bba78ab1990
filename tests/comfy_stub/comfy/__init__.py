"""Test stand-in of ComfyUI's ``comfy`` package (see tests/comfy_stub/README.md)."""
