"""The compiled kernel's GELU backward (``torch.ops.dinat.gelu_backward``), used by the memory-lean
MLP's backward on bfloat16 CPU tensors (:mod:`dinat_backbone.lean`): gelu(h) and the GELU gradient
in one pass, against float64, on every instruction set this CPU has."""
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from dinat_backbone.ops import cpu

sys.path.insert(0, os.path.dirname(__file__))
from helpers import instruction_sets, using_isa  # noqa: E402


def exact(h: torch.Tensor, g: torch.Tensor):
    """gelu(h) and g * gelu'(h) in float64 (erfc, not 1 + erf, so that the far negative tail is exact too)."""
    h, g = h.double(), g.double()
    cdf = 0.5 * torch.special.erfc(-h / math.sqrt(2.0))
    pdf = torch.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi)
    return h * cdf, g * (cdf + h * pdf)


def inputs(n, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.cat([torch.randn(n, generator=gen) * 3, torch.linspace(-12, 12, 2001),
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0])])
    g = torch.randn(h.shape, generator=gen)
    return h.to(dtype), g.to(dtype)


@pytest.mark.parametrize("isa", instruction_sets())
def test_float32_against_float64(isa):
    """Float32 arithmetic: relative error of a few float32 ulps where the value is not tiny, and the
    far negative tail (gelu(h) ~ h * exp(-h^2/2)) keeps its relative accuracy."""
    h, g = inputs(10007, torch.float32)  # not a multiple of any vector width: the tail lanes too
    with using_isa(isa):
        act, grad = torch.ops.dinat.gelu_backward(g, h)
    ref_act, ref_grad = exact(h, g)
    assert act.dtype == grad.dtype == torch.float32
    rel_act = (act.double() - ref_act).abs() / ref_act.abs().clamp_min(1e-38)
    moderate = h.abs() <= 5
    assert rel_act[moderate].max() < 5e-6
    # beyond, gelu(h) ~ h * exp(-h^2 / 2) inherits float32's rounding of h^2 / 2 (ATen's 1 + erf
    # has no digits left there at all: its relative error reaches 1)
    assert rel_act[~moderate].max() < 1e-4
    # the gradient is a sum of terms of either sign: its error against the terms' own size
    scale_grad = (g.double().abs() * (ref_act.abs() / h.double().abs().clamp_min(1e-30) + 1)).clamp_min(1e-30)
    assert ((grad.double() - ref_grad).abs() / scale_grad).max() < 2e-6


@pytest.mark.parametrize("isa", instruction_sets())
def test_bfloat16_within_one_rounding_and_no_worse_than_aten(isa):
    """bfloat16 in and out: every result within one bfloat16 rounding (2^-8 relative) of the exact
    value, and no element further from float64 than ATen's own gelu / gelu_backward allow themselves
    beyond that."""
    h, g = inputs(4099, torch.bfloat16, seed=1)
    with using_isa(isa):
        act, grad = torch.ops.dinat.gelu_backward(g, h)
    ref_act, ref_grad = exact(h, g)
    assert act.dtype == grad.dtype == torch.bfloat16
    aten_act, aten_grad = F.gelu(h), torch.ops.aten.gelu_backward(g, h)
    for ours, aten, ref in ((act, aten_act, ref_act), (grad, aten_grad, ref_grad)):
        err = (ours.double() - ref).abs()
        assert (err <= ref.abs() * 2.0 ** -8 + 1e-30).all()
        assert err.max() <= (aten.double() - ref).abs().max() * 1.0001 + 1e-30


def test_non_contiguous_and_special_values():
    h = torch.tensor([[float("inf"), -float("inf"), float("nan"), 0.5], [2.0, -2.0, 0.0, 1.0]]).t()  # transposed view
    g = torch.ones_like(h)
    act, grad = torch.ops.dinat.gelu_backward(g, h)
    assert act.is_contiguous() and act.shape == h.shape
    torch.testing.assert_close(act[:, 1], F.gelu(h[:, 1]))
    # gelu(inf) = inf (ATen's inf * (1 + erf) / 2 gives nan); -inf * Phi(-inf) = -inf * 0 is nan, as in ATen
    assert act[0, 0] == float("inf") and torch.isnan(act[1, 0]) and torch.isnan(act[2, 0])
    torch.testing.assert_close(grad, torch.ops.aten.gelu_backward(g, h), equal_nan=True, rtol=1e-6, atol=1e-7)


def test_bad_arguments_are_named():
    with pytest.raises(RuntimeError, match="grad has shape"):
        torch.ops.dinat.gelu_backward(torch.ones(3), torch.ones(4))
    with pytest.raises(RuntimeError, match="both be bfloat16 or both float32"):
        torch.ops.dinat.gelu_backward(torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    # the in-place variant: the same checks, and grad must be contiguous (it is written in place)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        torch.ops.dinat.gelu_backward_(torch.ones(4, 6)[:, ::2], torch.ones(4, 3))
    with pytest.raises(RuntimeError, match="grad has shape"):
        torch.ops.dinat.gelu_backward_(torch.ones(3), torch.ones(4))


@pytest.mark.parametrize("isa", instruction_sets())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_variant_matches(isa, dtype):
    """gelu_backward_ writes the gradient over grad (same bits as gelu_backward, every element read
    before it is overwritten) and returns gelu(h)."""
    h, g = inputs(1237, dtype, seed=2)
    with using_isa(isa):
        act, grad = torch.ops.dinat.gelu_backward(g, h)
        g2 = g.clone()
        ptr = g2.data_ptr()
        act2 = torch.ops.dinat.gelu_backward_(g2, h)
    assert g2.data_ptr() == ptr and torch.equal(act2, act) and torch.equal(g2, grad)


def test_cpu_gelu_backward_overwrites_only_what_it_may():
    """ops.cpu.gelu_backward(overwrite_grad=True): the result in grad itself where grad is
    contiguous; a non-contiguous grad gets a new tensor and keeps its values."""
    h = torch.randn(6, 16).bfloat16()
    g = torch.randn(6, 16).bfloat16()
    ref_act, ref_grad = cpu.gelu_backward(g, h)
    g_own = g.clone()
    act, grad = cpu.gelu_backward(g_own, h, overwrite_grad=True)
    assert grad is g_own and torch.equal(grad, ref_grad) and torch.equal(act, ref_act)
    g_t = g.t().contiguous().t()  # same values, not contiguous
    act, grad = cpu.gelu_backward(g_t, h, overwrite_grad=True)
    assert grad.data_ptr() != g_t.data_ptr() and torch.equal(g_t, g) and torch.equal(grad, ref_grad)


def test_in_place_op_under_torch_compile_fake_tensors():
    """The in-place op's fake (meta) kernel gives gelu(h)'s shape and dtype, so that a traced graph
    holding it has the right metadata."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        h = torch.empty(2, 3, 5, dtype=torch.bfloat16)
        act = torch.ops.dinat.gelu_backward_(torch.empty_like(h), h)
    assert act.shape == (2, 3, 5) and act.dtype == torch.bfloat16


def test_cpu_gelu_backward_serves_bfloat16_only():
    """ops.cpu.gelu_backward takes bfloat16 CPU tensors; others (float32 / float64 training) keep ATen."""
    h = torch.randn(8, 24)
    assert cpu.gelu_backward(h, h) is None and cpu.gelu_backward(h.double(), h.double()) is None
    act, grad = cpu.gelu_backward(h.bfloat16(), h.bfloat16())
    assert act.dtype == torch.bfloat16


def test_lean_mlp_backward_runs_it_under_bfloat16_autocast():
    """A DiNAT block's bf16 autocast training step runs the fused GELU backward (no ATen gelu_backward),
    and its gradients match the plain modules' within autocast's rounding."""
    from dinat_backbone.dinat import DiNATBlock

    torch.manual_seed(0)
    block = DiNATBlock(32, 2, kernel_size=3, dilation=1).train()
    x = torch.randn(2, 9, 11, 32).bfloat16().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        out = block(x)
    with torch.profiler.profile() as prof:
        out.float().sum().backward()
    seen = {e.key for e in prof.key_averages()}
    # in place: the gradient written over the fc2 input gradient the function made itself
    assert "dinat::gelu_backward_" in seen and "aten::gelu_backward" not in seen, seen
