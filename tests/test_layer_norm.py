"""The compiled kernel's LayerNorm (``torch.ops.dinat.layer_norm`` / ``layer_norm_backward``): forward
(optionally of x + residual) and backward against float64 on every instruction set this CPU has,
against ATen, its argument errors, and where the model uses it (:mod:`dinat_backbone.fused_norm` in
inference, :mod:`dinat_backbone.lean` in training)."""
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import profile

from dinat_backbone import fused_norm
from dinat_backbone.ops import cpu

from conftest import small_model

sys.path.insert(0, os.path.dirname(__file__))
from helpers import instruction_sets, rel_err, using_isa  # noqa: E402

#: [rows..., C]: C a multiple of every vector width (DiNAT's), and C with a partial last vector,
#: row counts past the 8- and 4-row groups with a remainder
SHAPES = [(2, 7, 5, 64), (3, 11, 40), (37, 7), (1, 3), (5, 200)]
EPS = 1e-5


def _inputs(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    C = shape[-1]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 1).to(dtype)
    r = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(C, generator=gen)
    b = torch.randn(C, generator=gen)
    g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return x, r, w, b, g


def _reference(s, w, b, g):
    """LayerNorm of s and its gradients (x, weight, bias) for the output gradient g, in float64."""
    s64 = s.double().requires_grad_()
    w64 = None if w is None else w.double().requires_grad_()
    b64 = None if b is None else b.double().requires_grad_()
    out = F.layer_norm(s64, s.shape[-1:], w64, b64, EPS)
    out.backward(g.double())
    return out.detach(), s64.grad, None if w is None else w64.grad, None if b is None else b64.grad


@pytest.mark.parametrize("isa", instruction_sets())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_against_float64(isa, dtype, shape):
    """Forward of x + residual: the sum exactly the plain add's (rounded to the dtype), the output
    within one rounding of the float64 LayerNorm of that sum, mean / rstd float32-accurate;
    backward: grad_x within the dtype's rounding, grad_weight / grad_bias float32-accurate."""
    x, r, w, b, g = _inputs(shape, dtype)
    with using_isa(isa):
        out, total, mean, rstd = torch.ops.dinat.layer_norm(x, r, w, b, EPS)
        grad_x, grad_w, grad_b = torch.ops.dinat.layer_norm_backward(g, total, mean, rstd, w, [True, True, True])
    assert torch.equal(total, x + r)
    ref, ref_gx, ref_gw, ref_gb = _reference(total, w, b, g)
    assert out.dtype == grad_x.dtype == dtype and grad_w.dtype == grad_b.dtype == torch.float32
    assert mean.shape == rstd.shape == shape[:-1] + (1,) and mean.dtype == torch.float32
    rounding = {torch.float32: 2e-6, torch.bfloat16: 2 ** -8}[dtype]
    assert rel_err(out, ref) <= rounding
    s64 = total.double()
    torch.testing.assert_close(mean.double(), s64.mean(-1, keepdim=True), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd.double(), (s64.var(-1, unbiased=False, keepdim=True) + EPS).rsqrt(),
                               rtol=1e-5, atol=0)
    assert rel_err(grad_x, ref_gx) <= {torch.float32: 1e-5, torch.bfloat16: 2 ** -7}[dtype]
    assert rel_err(grad_w, ref_gw) <= 1e-5 and rel_err(grad_b, ref_gb) <= 1e-5


@pytest.mark.parametrize("isa", instruction_sets())
def test_without_residual_weight_or_bias(isa):
    """No residual: the sum output is empty and the input is normalised; no weight / bias: ones / zeros;
    output_mask leaves out what is not wanted (empty tensors)."""
    x, _, w, b, g = _inputs((4, 9, 48), torch.bfloat16, seed=2)
    with using_isa(isa):
        out, total, mean, rstd = torch.ops.dinat.layer_norm(x, None, None, None, EPS)
        grad_x, grad_w, grad_b = torch.ops.dinat.layer_norm_backward(g, x, mean, rstd, None, [True, False, True])
        only_w = torch.ops.dinat.layer_norm_backward(g, x, mean, rstd, w, [False, True, False])
    assert total.numel() == 0
    ref, ref_gx, _, _ = _reference(x, None, None, g)
    assert rel_err(out, ref) <= 2 ** -8 and rel_err(grad_x, ref_gx) <= 2 ** -7
    assert grad_w.numel() == 0 and rel_err(grad_b, g.double().sum((0, 1))) <= 1e-5
    assert only_w[0].numel() == 0 and only_w[2].numel() == 0
    assert rel_err(only_w[1], _reference(x, w, b, g)[2]) <= 1e-5


@pytest.mark.parametrize("isa", instruction_sets())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_in_place_backward_matches(isa, dtype, shape):
    """layer_norm_backward_ writes grad_x over grad_out (the same bits as layer_norm_backward: each
    element of a row is read before it is overwritten) and returns the weight / bias gradients."""
    x, _, w, b, g = _inputs(shape, dtype, seed=5)
    with using_isa(isa):
        _, _, mean, rstd = torch.ops.dinat.layer_norm(x, None, w, b, EPS)
        grad_x, grad_w, grad_b = torch.ops.dinat.layer_norm_backward(g, x, mean, rstd, w, [True, True, True])
        g2 = g.clone()
        ptr = g2.data_ptr()
        grad_w2, grad_b2 = torch.ops.dinat.layer_norm_backward_(g2, x, mean, rstd, w, [True, True])
    assert g2.data_ptr() == ptr and torch.equal(g2, grad_x)
    assert torch.equal(grad_w2, grad_w) and torch.equal(grad_b2, grad_b)


def test_in_place_backward_wrapper():
    """ops.cpu.layer_norm_backward(overwrite_grad=True) overwrites only a contiguous grad_out and
    otherwise returns a new tensor, grad_out unchanged."""
    x, _, w, b, g = _inputs((6, 32), torch.bfloat16, seed=6)
    _, _, mean, rstd = torch.ops.dinat.layer_norm(x, None, w, b, EPS)
    ref = cpu.layer_norm_backward(g, x, mean, rstd, w, (True, True, True))
    own = g.clone()
    grads = cpu.layer_norm_backward(own, x, mean, rstd, w, (True, True, True), overwrite_grad=True)
    assert grads[0] is own and all(torch.equal(a, r) for a, r in zip(grads, ref))
    strided = g.t().contiguous().t()
    grads = cpu.layer_norm_backward(strided, x, mean, rstd, w, (True, False, True), overwrite_grad=True)
    assert grads[0].data_ptr() != strided.data_ptr() and torch.equal(strided, g) and grads[1] is None
    assert torch.equal(grads[0], ref[0]) and torch.equal(grads[2], ref[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_aten(dtype):
    """At DiNAT-T's stage shapes the output is ATen's within one rounding in bfloat16 (bit for bit
    here, not promised), in float32 as close to float64 as ATen's. ATen's bfloat16 backward rounds
    grad_weight / grad_bias to bfloat16, the kernel's are float32-accurate: every gradient no further
    from float64 than ATen's."""
    for shape in [(1, 50, 76, 64), (2, 16, 16, 256), (1, 13, 19, 512)]:
        x, r, w, b, g = _inputs(shape, dtype, seed=3)
        total = x + r
        aten, aten_mean, aten_rstd = torch.native_layer_norm(total, shape[-1:], w, b, EPS)
        out, _, mean, rstd = torch.ops.dinat.layer_norm(x, r, w, b, EPS)
        ref = F.layer_norm(total.double(), shape[-1:], w.double(), b.double(), EPS)
        if dtype == torch.bfloat16:
            # one rounding of the result, or of its terms where they cancel (xhat * w + b near 0)
            xhat = F.layer_norm(total.double(), shape[-1:], eps=EPS)
            scale = torch.maximum(aten.double().abs(), (xhat * w.double()).abs() + b.double().abs())
            assert ((out.double() - aten.double()).abs() <= scale * 2 ** -7).all()  # one ulp at most
        else:  # float32: both carry the statistics' rounding (x - mean cancels); no further from float64
            assert rel_err(out, ref) <= rel_err(aten, ref) * 1.5
        torch.testing.assert_close(mean, aten_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(rstd, aten_rstd, rtol=1e-5, atol=0)
        _, ref_gx, ref_gw, ref_gb = _reference(total, w, b, g)
        ours = torch.ops.dinat.layer_norm_backward(g, total, mean, rstd, w, [True, True, True])
        theirs = torch.ops.aten.native_layer_norm_backward(g, total, shape[-1:], aten_mean, aten_rstd, w, b,
                                                            [True, True, True])
        for o, t, ref in zip(ours, theirs, (ref_gx, ref_gw, ref_gb)):
            assert rel_err(o, ref) <= rel_err(t, ref) + 1e-6


def test_special_values_and_strides():
    """A row holding NaN or inf gives NaN like ATen (other rows unaffected); a constant row gives the
    bias; non-contiguous inputs are read correctly."""
    x, r, w, b, _ = _inputs((6, 32), torch.bfloat16, seed=4)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    x[3] = 2.5
    out = torch.ops.dinat.layer_norm(x, None, w, b, EPS)[0]
    aten = F.layer_norm(x, (32,), w, b, EPS)
    assert out[1].isnan().all() and out[2].isnan().all() and aten[1].isnan().all()
    torch.testing.assert_close(out[3].float(), b.bfloat16().float())
    torch.testing.assert_close(out[[0, 4, 5]].float(), aten[[0, 4, 5]].float(), rtol=2 ** -7, atol=2 ** -7)
    wide = torch.randn(6, 64).bfloat16()
    view = wide[:, ::2]  # strided
    torch.testing.assert_close(torch.ops.dinat.layer_norm(view, None, w, b, EPS)[0].float(),
                               F.layer_norm(view, (32,), w, b, EPS).float(), rtol=2 ** -7, atol=2 ** -7)


@pytest.mark.parametrize("args, match", [
    (lambda x: (x.double(), None, None, None, EPS), r"input must be bfloat16 or float32, got Double"),
    (lambda x: (x, x[:, :-1], None, None, EPS), r"residual has shape \[4, 15\], input has shape \[4, 16\]"),
    (lambda x: (x, x.float(), None, None, EPS), r"residual must have input's dtype BFloat16, got Float"),
    (lambda x: (x, None, torch.ones(15), None, EPS), r"weight must have shape \[16\] \(input's last axis\)"),
])
def test_bad_arguments_are_named(args, match):
    x = torch.randn(4, 16).bfloat16()
    with pytest.raises(RuntimeError, match=match):
        torch.ops.dinat.layer_norm(*args(x))
    mean = torch.zeros(4, 1)
    with pytest.raises(RuntimeError, match=r"mean and rstd must be float32 CPU tensors of 4 elements"):
        torch.ops.dinat.layer_norm_backward(x, x, mean[:2], mean, None, [True, True, True])
    # the in-place backward also wants a contiguous grad_out shaped like the input
    with pytest.raises(RuntimeError, match="must be contiguous"):
        torch.ops.dinat.layer_norm_backward_(torch.zeros(16, 4).bfloat16().t(), x, mean, mean, None, [True, True])
    with pytest.raises(RuntimeError, match=r"grad_out has shape \[2, 32\], input has shape \[4, 16\]"):
        torch.ops.dinat.layer_norm_backward_(x.reshape(2, 32), x, mean, mean, None, [True, True])


def _kernel_calls(fn, name="dinat::layer_norm") -> int:
    with profile() as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == name)


@pytest.fixture
def switch_restored():
    yield
    fused_norm.set_fused_norm(True)


def test_inference_uses_the_kernel_where_nothing_can_tell(switch_restored):
    """no_grad inference under bf16 autocast runs every LayerNorm of the model in the kernel: norm1,
    norm2 (with the residual add), the patch embedding's, the downsamplers' and the output norms;
    the outputs equal the switched-off model's within rounding. Float32 (where ATen's is as fast), a
    hook on a norm, or the switch off: the modules as written."""
    model = small_model(seed=0, perturb=True).eval()
    blocks = [blk for level in model.levels for blk in level.blocks]
    n_norms = 2 * len(blocks) + 1 + sum(lv.downsample is not None for lv in model.levels) + len(model.out_indices)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert _kernel_calls(lambda: model(x)) == 0  # float32
        with torch.autocast("cpu", torch.bfloat16):
            assert _kernel_calls(lambda: model(x)) == n_norms
            fused_bf16 = model(x)
            handle = blocks[0].norm1.register_forward_hook(lambda m, i, o: None)
            assert _kernel_calls(lambda: model(x)) == n_norms - 1
            handle.remove()
            fused_norm.set_fused_norm(False)
            assert _kernel_calls(lambda: model(x)) == 0
            plain_bf16 = model(x)
    for a, b in zip(fused_bf16, plain_bf16):
        assert a.dtype == b.dtype and rel_err(a, b) <= 2e-2


def test_add_layer_norm_falls_back_to_the_plain_ops():
    """Mixed dtypes (a float32 layer-scale branch on a bfloat16 stream): the plain add, then the
    LayerNorm of its float32 sum; a module other than nn.LayerNorm: the plain add and module."""
    norm = nn.LayerNorm(8)
    x = torch.randn(2, 8).bfloat16()
    y = torch.randn(2, 8)
    with torch.no_grad():
        total, normed = fused_norm.add_layer_norm(x, y, norm)
        assert total.dtype == torch.float32 and torch.equal(total, x + y)
        torch.testing.assert_close(normed, norm(x + y))  # the float32 sum, normalised by the kernel
        ident = nn.Identity()
        total, normed = fused_norm.add_layer_norm(x, x, ident)
        assert torch.equal(normed, x + x)


def test_training_step_runs_the_kernel_forward_and_backward():
    """Training under bf16 autocast (a bf16 residual stream) runs every LayerNorm in the kernel,
    forward and backward: the blocks' norms inside the memory-lean LayerNorm -> Linear function
    (forward, its recompute in backward, backward), the patch embedding's, downsamplers' and output
    norms in fused_norm's autograd function; float32 and float64 keep ATen's."""
    for dtype, autocast in [(torch.float32, True), (torch.float32, False), (torch.float64, False)]:
        model = small_model(seed=0, perturb=True).to(dtype).train()
        n_block_norms = 2 * sum(len(level.blocks) for level in model.levels)
        n_other = 1 + sum(lv.downsample is not None for lv in model.levels) + len(model.out_indices)
        x = torch.randn(1, 3, 64, 64, dtype=dtype)

        def step():
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                loss = sum(o.float().mean() for o in model(x))
            loss.backward()

        with profile() as prof:
            step()
        counts = {e.key: e.count for e in prof.key_averages()}
        kernel = autocast
        # the blocks' norms write grad_x over the gradient their function made (the in-place op)
        assert counts.get("dinat::layer_norm_backward_", 0) == (n_block_norms if kernel else 0)
        assert counts.get("dinat::layer_norm_backward", 0) == (n_other if kernel else 0)
        assert counts.get("dinat::layer_norm", 0) == (2 * n_block_norms + n_other if kernel else 0)
    for dtype in (torch.float64, torch.float32):
        assert cpu.layer_norm(torch.randn(2, 4, dtype=dtype), None, None, EPS) is None


def test_autograd_function_gradients():
    """fused_norm.layer_norm on a bfloat16 map with a graph: the values and gradients of
    nn.LayerNorm (the output within one rounding, bit for bit here; the weight / bias gradients
    float32-accurate, so within bfloat16 rounding of ATen's); a hook on the norm gets the module
    itself."""
    dtype = torch.bfloat16
    torch.manual_seed(0)
    norm = nn.LayerNorm(48)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(3, 5, 48).to(dtype)
    g = torch.randn(3, 5, 48).to(dtype)
    results = []
    for fused in (True, False):
        xi = x.clone().requires_grad_()
        norm.zero_grad()
        out = fused_norm.layer_norm(xi, norm) if fused else norm(xi)
        out.backward(g)
        results.append((out.detach(), xi.grad, norm.weight.grad.clone(), norm.bias.grad.clone()))
    (o1, gx1, gw1, gb1), (o2, gx2, gw2, gb2) = results
    torch.testing.assert_close(o1.float(), o2.float(), rtol=2 ** -7, atol=2 ** -7)  # one rounding
    for a, b in ((gx1, gx2), (gw1, gw2), (gb1, gb2)):
        assert a.dtype == b.dtype and rel_err(a, b) <= 2e-2
    assert _kernel_calls(lambda: fused_norm.layer_norm(x.requires_grad_(), norm).sum().backward(),
                         "dinat::layer_norm_backward") == 1
    seen = []
    handle = norm.register_forward_hook(lambda m, i, o: seen.append(o))
    assert _kernel_calls(lambda: fused_norm.layer_norm(x, norm)) == 0 and len(seen) == 1
    handle.remove()


def test_switch_off_gives_aten_everywhere(switch_restored):
    """set_fused_norm(False): a bf16 training step runs no kernel LayerNorm (the lean functions too)."""
    fused_norm.set_fused_norm(False)
    model = small_model(seed=0, perturb=True).train()
    x = torch.randn(1, 3, 64, 64)

    def step():
        with torch.autocast("cpu", torch.bfloat16):
            loss = sum(o.float().mean() for o in model(x))
        loss.backward()

    assert _kernel_calls(step) == 0
