"""The VAE's convolutions run through oneDNN on the CPU (anytalker_core.encoders.onednn_conv).

Checked against PyTorch's own kernels (its size heuristic sends the demo VAE's narrow convolutions to
``slow_conv3d``), by the kernels the profiler sees, and by what is left to PyTorch's own choice.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from anytalker_core.encoders.onednn_conv import restore_pytorch_convolutions, route_convolutions_through_onednn

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


def _kernels(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {e.name for e in prof.events()}


def _narrow_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    model = AutoencoderKLWan(base_dim=4, z_dim=16).eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_narrow_vae_decodes_through_onednn_with_the_same_values():
    model = _narrow_vae()
    z = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert "aten::slow_conv3d" in _kernels(lambda: model.decode(z))  # PyTorch's own choice at this width
        expected = model.decode(z).sample
        routed = route_convolutions_through_onednn(model)
        kernels = _kernels(lambda: model.decode(z))
        got = model.decode(z).sample
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert routed == len(convs) > 20
    assert "aten::mkldnn_convolution" in kernels
    assert not {"aten::slow_conv3d", "aten::thnn_conv2d", "aten::_slow_conv2d_forward"} & kernels
    diff = (got - expected).abs()  # float32 rounding through ~40 convolutions: 2.3e-5 at most, 3e-7 typical
    assert diff.max() <= 1e-4 * expected.abs().max() and diff.mean() <= 2e-5 * expected.abs().mean()
    assert expected.abs().mean() > 0.05
    assert route_convolutions_through_onednn(model) == routed  # idempotent: nothing wrapped twice
    with torch.inference_mode():  # the benchmarks' baseline: back on PyTorch's own kernels, bit for bit
        assert restore_pytorch_convolutions(model) == routed
        assert "aten::slow_conv3d" in _kernels(lambda: model.decode(z))
        assert torch.equal(model.decode(z).sample, expected)


def test_every_conv_shape_matches_pytorch():
    """Strides, dilation, groups, padding and no bias, 2-D and 3-D, against the module's own forward."""
    gen = torch.Generator().manual_seed(2)
    cases = [torch.nn.Conv3d(4, 6, 3, padding=1), torch.nn.Conv3d(4, 6, (1, 2, 2), stride=(1, 2, 2)),
             torch.nn.Conv3d(4, 4, 3, dilation=2, groups=2, bias=False), torch.nn.Conv2d(4, 6, 1),
             torch.nn.Conv2d(4, 6, 3, stride=2, padding=(1, 0))]
    for conv in cases:
        conv.requires_grad_(False)
        x = torch.randn(2, 4, *([5] * (conv.weight.dim() - 3)), 9, generator=gen)
        expected = conv(x)
        route_convolutions_through_onednn(conv)
        assert "aten::mkldnn_convolution" in _kernels(lambda: conv(x))
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-6)


def test_what_oneDNN_does_not_take_keeps_pytorchs_own_path():
    conv = torch.nn.Conv3d(4, 4, 3).requires_grad_(False)
    route_convolutions_through_onednn(conv)
    x = torch.randn(1, 4, 3, 6, 6)
    torch.backends.mkldnn.enabled = False  # the user turned oneDNN off
    try:
        assert "aten::mkldnn_convolution" not in _kernels(lambda: conv(x))
    finally:
        torch.backends.mkldnn.enabled = True
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast decides the dtype: PyTorch's kernels in bf16
        assert conv(x).dtype == torch.bfloat16
    conv.to(torch.float64)  # other dtypes
    assert "aten::mkldnn_convolution" not in _kernels(lambda: conv(x.double()))
    conv.to(torch.float32).requires_grad_(True)  # training: autograd through PyTorch's kernels
    x = x.requires_grad_(True)
    out = conv(x)
    out.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    reflect = torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    assert route_convolutions_through_onednn(reflect) == 0  # its padding is not oneDNN's zeros
