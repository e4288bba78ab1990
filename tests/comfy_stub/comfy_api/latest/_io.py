"""Stand-in of ``comfy_api.latest.io`` (V3 node schema), limited to the types this pack uses.

Signatures follow ComfyUI's ``comfy_api/latest/_io.py``; unknown keyword arguments raise TypeError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_BASE_INPUT = ("display_name", "optional", "tooltip", "lazy", "extra_dict", "raw_link", "advanced")
_WIDGET = _BASE_INPUT + ("default", "socketless", "force_input")


class Input:
    """One input socket/widget; ``kwargs`` keeps what the node declared."""

    allowed: tuple[str, ...] = _BASE_INPUT
    io_type = ""

    def __init__(self, id: str, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.allowed)
        if unknown:
            raise TypeError(f"{type(self).__qualname__}.__init__() got unexpected keyword argument(s) {sorted(unknown)}")
        self.id = id
        self.kwargs = kwargs
        self.optional = bool(kwargs.get("optional", False))
        self.tooltip = kwargs.get("tooltip")
        self.advanced = kwargs.get("advanced")
        self.default = kwargs.get("default")


class Output:
    io_type = ""

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False) -> None:
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list


def _comfytype(io_type: str, input_keys: tuple[str, ...] = _BASE_INPUT):
    in_cls = type("Input", (Input,), {"allowed": input_keys, "io_type": io_type})
    out_cls = type("Output", (Output,), {"io_type": io_type})
    return type(io_type, (), {"io_type": io_type, "Input": in_cls, "Output": out_cls})


Int = _comfytype("INT", _WIDGET + ("min", "max", "step", "control_after_generate", "display_mode"))
Float = _comfytype("FLOAT", _WIDGET + ("min", "max", "step", "round", "display_mode", "gradient_stops"))
String = _comfytype("STRING", _WIDGET + ("multiline", "placeholder", "dynamic_prompts"))
Boolean = _comfytype("BOOLEAN", _WIDGET + ("label_on", "label_off"))
Combo = _comfytype("COMBO", ("options",) + _WIDGET + ("control_after_generate", "upload", "image_folder", "remote"))
Image = _comfytype("IMAGE")
Mask = _comfytype("MASK")
Audio = _comfytype("AUDIO")
Latent = _comfytype("LATENT")
Conditioning = _comfytype("CONDITIONING")
ClipVision = _comfytype("CLIP_VISION")
Vae = _comfytype("VAE")
Model = _comfytype("MODEL")
Guider = _comfytype("GUIDER")
AudioEncoder = _comfytype("AUDIO_ENCODER")


def Custom(io_type: str):
    """``io.Custom("MY_TYPE")``: a socket type carrying any Python object."""
    return _comfytype(io_type)


class Autogrow:
    """Variable number of inputs from a template; ``execute`` receives ``{name: value}``."""

    io_type = "COMFY_AUTOGROW_V3"
    Type = dict

    class TemplatePrefix:
        def __init__(self, input: Input, prefix: str, min: int = 1, max: int = 10) -> None:
            assert min >= 0 and 1 <= max <= 100
            self.input, self.prefix, self.min, self.max = input, prefix, min, max
            self.names = [f"{prefix}{i}" for i in range(max)]

    class TemplateNames:
        def __init__(self, input: Input, names: list[str], min: int = 1) -> None:
            self.input, self.names, self.min = input, list(names)[:100], min

    class Input(Input):
        io_type = "COMFY_AUTOGROW_V3"
        allowed = ("display_name", "optional", "tooltip", "lazy", "extra_dict")

        def __init__(self, id: str, template, **kwargs: Any) -> None:
            super().__init__(id, **kwargs)
            self.template = template


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    search_aliases: list[str] = field(default_factory=list)
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False

    def validate(self) -> None:
        """As ComfyUI: input ids (autogrow templates included) and explicit output ids must be unique."""
        ids = []
        for inp in self.inputs:
            ids.append(inp.id)
            if isinstance(inp, Autogrow.Input):
                ids.extend(inp.template.names)
        outputs = [o.id for o in self.outputs if o.id is not None]
        if len(set(ids)) != len(ids) or len(set(outputs)) != len(outputs):
            raise ValueError(f"{self.node_id}: input and output ids must be unique: {ids} {outputs}")


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, expand: Any = None, block_execution: Any = None) -> None:
        self.args = args
        self.ui = ui

    @property
    def result(self) -> tuple[Any, ...] | None:
        return self.args if self.args else None


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs: Any) -> NodeOutput:
        raise NotImplementedError
