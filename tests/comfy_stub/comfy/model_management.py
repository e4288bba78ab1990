"""Stand-in of ``comfy.model_management`` (CPU only): devices, memory hooks and interruption."""

from __future__ import annotations

import torch

interrupt_processing = False
FREED: list[float] = []


class InterruptProcessingException(BaseException):
    """A BaseException, as in ComfyUI: ``except Exception`` does not catch it."""


def get_torch_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def free_memory(memory_required, device, keep_loaded=(), for_dynamic=False, pins_required=0, ram_required=0):
    FREED.append(float(memory_required))


def soft_empty_cache(force=False):
    pass


def interrupt_current_processing(value=True):
    global interrupt_processing
    interrupt_processing = value


def processing_interrupted():
    return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    if interrupt_processing:
        interrupt_processing = False
        raise InterruptProcessingException()


def load_model_gpu(model):
    """ComfyUI moves the patched model to its load device; everything stays on the CPU here."""
