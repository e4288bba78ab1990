"""Stand-in of ``comfy_api.latest``: ``io`` and ``ComfyExtension``."""

from __future__ import annotations

from abc import ABC, abstractmethod

from . import _io as io


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Called when the extension is loaded."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        ...


__all__ = ["ComfyExtension", "io"]
