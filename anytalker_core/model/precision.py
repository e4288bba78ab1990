"""Which compute dtype the hardware runs fast: the ``auto`` choice of ``--dtype`` and the loader node.

bfloat16 where the hardware has bf16 matrix units: a CUDA GPU that supports bf16 (else fp16), or a CPU
with AVX512-BF16 or AMX-BF16 (``/proc/cpuinfo`` flags; PyTorch's oneDNN kernels use them). Measured on
this project's CI CPU (AVX512-BF16, no AMX): a 1344x1536x8960 matmul takes 0.35 s in fp32 and 0.076 s
in bf16 on one core (x4.5), and a DiT forward at the 1.3B widths differs from fp32 by ~0.5 % rel-L2
(BENCHMARKS.md, "bf16 on the CPU"). Other CPUs stay in float32, where bf16 is emulated and slower.
"""

from __future__ import annotations

import functools

import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fast_bf16(device: torch.device | str) -> bool:
    """True when ``device`` computes bfloat16 matmuls natively (faster than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)
    return False


def auto_dtype(device: torch.device | str) -> torch.dtype:
    """The DiT compute dtype for ``auto``: bf16 where it is fast, fp16 on GPUs without bf16, else fp32."""
    device = torch.device(device)
    if fast_bf16(device):
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    return torch.float32
