"""Stand-in of ComfyUI's ``latent_preview``: ``get_previewer`` gives a previewer that records the latents it is
asked to show (ComfyUI's real one draws a JPEG with Latent2RGB or TAESD; tests/comfyui_native checks that)."""

from __future__ import annotations

PREVIEWS: list[tuple[int, ...]] = []  # the shapes of the latents sent for preview


class RecordingPreviewer:
    def decode_latent_to_preview_image(self, preview_format, x0):
        PREVIEWS.append(tuple(x0.shape))
        return (preview_format, None, 512)


def get_previewer(device, latent_format):
    return RecordingPreviewer()
