"""Neighbourhood-attention op (issue 2): every backend against the brute-force reference.

* float64 grid (K in {3, 5, 7, 9} x d in {1, 2, 3, 4, 8}; L = K*d exactly on one axis and L not a
  multiple of d on the other; batch > 1; rpb on and off): forward and gradients of q, k, v, rpb,
  for both the compiled ``cpu`` kernel and the pure-PyTorch ``torch`` backend;
* ``torch.autograd.gradcheck`` on small shapes;
* float32 and bfloat16 against float64 (tolerances below), every instruction set of the kernel;
* non-contiguous inputs; an independent cross-check with natten-mps (old NATTEN ops);
* bad input, the backend table (automatic and explicit selection, reasons) and the module.

The reference is an explicit loop over queries, so maps stay small (L = K*d .. K*d + 1) and
batch / heads / head_dim tiny.
"""
import functools
import os
import sys
import warnings

import pytest
import torch

from dinat_backbone import ops
from dinat_backbone.ops import NeighborhoodAttention2D, na2d
# `from tests.reference import ...` is shadowed by the top-level `tests` package that the
# mmsegmentation 1.2.2 wheel installs into site-packages; import the module from this directory.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import forward_and_grads, make_inputs, rel_err, using_isa  # noqa: E402
from reference import axis_neighbours, na2d_reference  # noqa: E402

HAVE_KERNEL = ops.cpu_kernel_available()
# no skip without the compiled kernel: the "cpu" tests fail (tools/install.sh always builds it)
BACKENDS = ["cpu", "torch"]

# Tolerances, as max |error| / max |reference| per tensor:
#   float64: rounding only.
#   float32: the kernel computes in float32 with a polynomial exp (~1 ulp); errors ~1e-6.
#   bfloat16: inputs are rounded to bf16 (the reference gets the same rounded inputs in float64),
#     the kernel computes in float32 and rounds the result to bf16 (8 mantissa bits: 2^-8 = 0.4 %).
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1.6e-2}








# ----------------------------------------------------------------------------------------------
# float64 grid against the reference
# ----------------------------------------------------------------------------------------------
def grid_cases():
    cases = []
    for K in (3, 5, 7, 9):
        for d in (1, 2, 3, 4, 8):
            X = K * d  # exactly kernel_size * dilation
            Y = K * d + 1 if d > 1 else K + 2  # not a multiple of d (non-square for d = 1 too)
            B = 2 if d in (1, 4) else 1
            use_rpb = (K + d) % 2 == 1 or d == 1
            cases.append((K, d, B, X, Y, use_rpb))
    # maps with a proper interior (windows not all clamped to the border), swapped axes
    cases += [(3, 1, 1, 11, 9, True), (3, 2, 2, 13, 10, False), (5, 3, 1, 17, 21, True), (7, 1, 1, 9, 16, True)]
    return cases


# Maps with more queries than this are checked on selected query rows only (the reference is an
# explicit loop; its autograd graph over ~5000 queries takes tens of seconds): the output at those
# rows, and the gradients of the loss sum(grad_out * out) with grad_out zero everywhere else, which
# still exercises every gradient path (dq, and dk / dv / drpb through the selected queries).
FULL_REFERENCE_MAX_QUERIES = 400


def selected_rows(X, d):
    return sorted({0, min(d, X - 1), X // 2, max(X - 1 - d, 0), X - 1})


def reference_on_rows(q, k, v, K, d, rpb, rows):
    """tests/reference.py's formulas, evaluated for the queries of ``rows`` only: [B, len(rows), Y, H, D]."""
    B, X, Y, H, D = q.shape
    scale = D ** -0.5
    out_rows = []
    for i in rows:
        ky, ry = axis_neighbours(i, X, K, d)
        cols = []
        for j in range(Y):
            kx, rx = axis_neighbours(j, Y, K, d)
            logits = torch.einsum("bhd,bxyhd->bhxy", q[:, i, j], k[:, ky][:, :, kx]) * scale
            if rpb is not None:
                logits = logits + rpb[:, ry][:, :, rx]
            attn = torch.softmax(logits.reshape(B, H, -1), -1).reshape_as(logits)
            cols.append(torch.einsum("bhxy,bxyhd->bhd", attn, v[:, ky][:, :, kx]))
        out_rows.append(torch.stack(cols, 1))
    return torch.stack(out_rows, 1)


@functools.lru_cache(maxsize=None)
def reference_result(K, d, B, X, Y, use_rpb, H=2, D=3):
    q, k, v, rpb = make_inputs(B, X, Y, H, D, K, use_rpb)
    grad_out = torch.randn(B, X, Y, H, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if X * Y <= FULL_REFERENCE_MAX_QUERIES:
        out, *grads = forward_and_grads(lambda *t: na2d_reference(*t[:3], K, d, t[3]), (q, k, v, rpb), grad_out)
        return (q, k, v, rpb, grad_out), None, out, grads
    rows = selected_rows(X, d)
    mask = torch.zeros(X, dtype=torch.bool)
    mask[rows] = True
    grad_out = grad_out * mask.view(1, X, 1, 1, 1)
    out, *grads = forward_and_grads(
        lambda *t: reference_on_rows(*t[:3], K, d, t[3], rows), (q, k, v, rpb), grad_out[:, rows]
    )
    return (q, k, v, rpb, grad_out), rows, out, grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K,d,B,X,Y,use_rpb", grid_cases())
def test_float64_grid_matches_reference(backend, K, d, B, X, Y, use_rpb):
    (q, k, v, rpb, grad_out), rows, ref_out, ref_grads = reference_result(K, d, B, X, Y, use_rpb)
    out, *grads = forward_and_grads(lambda *t: na2d(*t[:3], K, d, t[3], backend=backend), (q, k, v, rpb), grad_out)
    assert out.dtype == torch.float64 and out.shape == q.shape
    if rows is not None:
        out = out[:, rows]
    assert rel_err(out, ref_out) < TOL[torch.float64]
    names = ["q", "k", "v", "rpb"]
    for name, g, rg in zip(names, grads, ref_grads):
        assert g.shape == rg.shape, name
        assert rel_err(g, rg) < TOL[torch.float64], name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K,d,X,Y,use_rpb", [(3, 1, 4, 5, True), (3, 2, 7, 6, True), (5, 1, 6, 5, False)])
def test_gradcheck(backend, K, d, X, Y, use_rpb):
    q, k, v, rpb = make_inputs(1, X, Y, 2, 2, K, use_rpb)
    inputs = [t.requires_grad_() for t in (q, k, v)] + ([rpb.requires_grad_()] if use_rpb else [])

    def fn(*args):
        return na2d(args[0], args[1], args[2], K, d, args[3] if use_rpb else None, scale=0.7, backend=backend)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# float32 / bfloat16 against float64; instruction sets of the kernel
# ----------------------------------------------------------------------------------------------
LOW_PRECISION_CASES = [(7, 1, 1, 16, 21, True, 32), (3, 4, 2, 13, 17, True, 8), (5, 2, 1, 11, 12, False, 20)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K,d,B,X,Y,use_rpb,D", LOW_PRECISION_CASES)
def test_low_precision_vs_float64(backend, dtype, K, d, B, X, Y, use_rpb, D):
    q, k, v, rpb = make_inputs(B, X, Y, 2, D, K, use_rpb, dtype=dtype)
    grad_out = torch.randn(B, X, Y, 2, D, generator=torch.Generator().manual_seed(3)).to(dtype)
    out, *grads = forward_and_grads(lambda *t: na2d(*t[:3], K, d, t[3], backend=backend), (q, k, v, rpb), grad_out)
    wide = lambda t: None if t is None else t.double()  # noqa: E731
    ref_out, *ref_grads = forward_and_grads(
        lambda *t: na2d(*t[:3], K, d, t[3], backend="torch"), (wide(q), wide(k), wide(v), wide(rpb)), grad_out.double()
    )
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert rel_err(out, ref_out) < TOL[dtype]
    for g, rg in zip(grads, ref_grads):
        assert rel_err(g, rg) < 2 * TOL[dtype]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("K,d,B,X,Y,use_rpb,D",
                         LOW_PRECISION_CASES + [(9, 1, 1, 12, 40, True, 16), (15, 1, 1, 16, 17, True, 4)])
def test_kernel_instruction_sets(isa, K, d, B, X, Y, use_rpb, D):
    """Every run-time code path of the kernel (capped to what this CPU has) against float64."""
    q, k, v, rpb = make_inputs(B, X, Y, 2, D, K, use_rpb, dtype=torch.float32)
    grad_out = torch.randn(B, X, Y, 2, D, generator=torch.Generator().manual_seed(3))
    with using_isa(isa):
        out, *grads = forward_and_grads(lambda *t: na2d(*t[:3], K, d, t[3], backend="cpu"), (q, k, v, rpb), grad_out)
    wide = lambda t: None if t is None else t.double()  # noqa: E731
    ref_out, *ref_grads = forward_and_grads(
        lambda *t: na2d(*t[:3], K, d, t[3], backend="torch"), (wide(q), wide(k), wide(v), wide(rpb)), grad_out.double()
    )
    assert rel_err(out, ref_out) < TOL[torch.float32]
    for g, rg in zip(grads, ref_grads):
        assert rel_err(g, rg) < 2 * TOL[torch.float32]


# ----------------------------------------------------------------------------------------------
# Layouts, inference mode
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    B, X, Y, H, D, K, d = 2, 9, 11, 2, 6, 3, 2
    gen = torch.Generator().manual_seed(5)
    # q, k, v as unbound slices of a fused qkv projection (the module's layout) ...
    qkv = torch.randn(B, X, Y, 3, H, D, generator=gen, dtype=torch.float64)
    q, k, v = qkv.unbind(3)
    # ... and value with head_dim not contiguous at all
    v = torch.randn(B, X, Y, D, H, generator=gen, dtype=torch.float64).transpose(-1, -2)
    rpb = torch.randn(2 * K - 1, 2 * K - 1, H, generator=gen, dtype=torch.float64).permute(2, 0, 1)
    assert not (q.is_contiguous() or v.is_contiguous() or rpb.is_contiguous())
    grad_out = torch.randn(B, X, Y, H, D, generator=gen, dtype=torch.float64)
    out, *grads = forward_and_grads(lambda *t: na2d(*t[:3], K, d, t[3], backend=backend), (q, k, v, rpb), grad_out)
    ref_out, *ref_grads = forward_and_grads(
        lambda *t: na2d_reference(*t[:3], K, d, t[3]),
        (q.contiguous(), k.contiguous(), v.contiguous(), rpb.contiguous()), grad_out,
    )
    assert rel_err(out, ref_out) < TOL[torch.float64]
    for g, rg in zip(grads, ref_grads):
        assert rel_err(g, rg) < TOL[torch.float64]


def test_cpu_kernel_inference_mode_matches_training_forward():
    q, k, v, rpb = make_inputs(1, 14, 15, 2, 8, 7, True, dtype=torch.float32)
    with torch.no_grad():
        out_nograd = na2d(q, k, v, 7, 2, rpb, backend="cpu")
    out_grad = na2d(q.requires_grad_(), k, v, 7, 2, rpb, backend="cpu")
    assert torch.equal(out_nograd, out_grad.detach())


# ----------------------------------------------------------------------------------------------
# Independent implementation: natten-mps (the old NATTEN <= 0.17 ops in pure PyTorch)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K,d,X,Y", [(3, 1, 8, 9), (5, 2, 13, 10), (7, 3, 21, 23), (3, 4, 12, 15)])
def test_matches_natten_mps(backend, K, d, X, Y):
    from natten_mps.compat.v014 import natten2dav, natten2dqkrpb

    B, H, D = 2, 2, 8
    q, k, v, rpb = make_inputs(B, X, Y, H, D, K, True)
    scale = D ** -0.5
    # the old ops use [B, heads, X, Y, D] and leave the scaling of q to the caller
    heads_first = lambda t: t.permute(0, 3, 1, 2, 4).contiguous()  # noqa: E731
    attn = natten2dqkrpb(heads_first(q) * scale, heads_first(k), rpb, K, d).softmax(-1)
    expected = natten2dav(attn, heads_first(v), K, d).permute(0, 2, 3, 1, 4)
    assert rel_err(na2d(q, k, v, K, d, rpb, backend=backend), expected) < 1e-10


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def _qkv(shape=(1, 9, 9, 2, 4)):
    return [torch.randn(*shape) for _ in range(3)]


@pytest.mark.parametrize(
    "make_call,match",
    [
        (lambda: (torch.randn(1, 9, 9, 8), *_qkv()[1:], 3), r"query must have 5 dims \[batch, X, Y, heads, head_dim\]"),
        (lambda: (*_qkv()[:2], torch.randn(1, 9, 8, 2, 4), 3), r"must have the same shape"),
        (lambda: (*_qkv(), 4), r"kernel_size must be an odd integer >= 3, got 4; use e.g. 5"),
        (lambda: (*_qkv(), 1), r"kernel_size must be an odd integer >= 3"),
        (lambda: (*_qkv((1, 8, 12, 2, 4)), 3, 3),
         r"axis X \(dim 1\) has size 8, smaller than kernel_size \* dilation = 3 \* 3 = 9; pad the map"),
        (lambda: (*_qkv((1, 12, 5, 2, 4)), 7),
         r"axis Y \(dim 2\) has size 5, smaller than kernel_size \* dilation = 7 \* 1 = 7"),
        (lambda: (*_qkv(), 3, 1, torch.zeros(2, 3, 3)),
         r"rpb must have shape \[heads, 2\*kernel_size-1, 2\*kernel_size-1\] = \[2, 5, 5\], got \(2, 3, 3\)"),
        (lambda: (*_qkv(), 3, 1, torch.zeros(3, 5, 5)), r"rpb must have shape .* = \[2, 5, 5\], got \(3, 5, 5\)"),
        (lambda: (*_qkv(), 3, 0), r"dilation must be an integer >= 1"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_raises_value_error(backend, make_call, match):
    with pytest.raises(ValueError, match=match):
        na2d(*make_call(), backend=backend)


def test_mixed_dtypes_raise():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="must share a dtype"):
        na2d(q, k.double(), v, 3)


# ----------------------------------------------------------------------------------------------
# Backend selection
# ----------------------------------------------------------------------------------------------
def test_default_cpu_backend(monkeypatch):
    monkeypatch.delenv(ops.BACKEND_ENV, raising=False)
    selection = ops.select_backend(_qkv()[0], None, 3)
    assert selection.name == ("cpu" if HAVE_KERNEL else "torch")
    assert [name for name, _ in selection.skipped] == ["export", "triton", "natten"]
    assert ops.available_backends("cpu")[-1] == "torch"
    assert ops.available_backends("cpu") == (["cpu", "torch"] if HAVE_KERNEL else ["torch"])


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv(ops.BACKEND_ENV, "torch")
    assert ops.select_backend(_qkv()[0], None, 3).name == "torch"
    na2d(*_qkv(), 3)
    monkeypatch.setenv(ops.BACKEND_ENV, "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        na2d(*_qkv(), 3)


def test_argument_overrides_env_var(monkeypatch):
    monkeypatch.setenv(ops.BACKEND_ENV, "torch")
    assert ops.select_backend(_qkv()[0], None, 3, backend="cpu").name == "cpu"


def test_unavailable_backends_raise_clearly(monkeypatch):
    monkeypatch.delenv(ops.BACKEND_ENV, raising=False)
    monkeypatch.setattr(ops.cpu, "kernel_available", lambda: False)
    with pytest.raises(ValueError, match=r"backend='cpu' cannot serve this call: the compiled kernel "
                                         r"dinat_backbone._C is not available .* Backends that can: \['torch'\]"):
        na2d(*_qkv(), 3, backend="cpu")
    with pytest.raises(ValueError, match="it has no relative positional bias"):
        na2d(*_qkv(), 3, rpb=torch.zeros(2, 5, 5), backend="natten")
    with pytest.raises(ValueError, match="needs CUDA tensors, got cpu"):
        na2d(*_qkv(), 3, backend="natten")
    monkeypatch.setenv(ops.BACKEND_ENV, "cpu")
    with pytest.raises(ValueError, match=r"DINAT_NA_BACKEND='cpu' cannot serve this call"):
        na2d(*_qkv(), 3)


def test_missing_kernel_warns_once_and_falls_back(monkeypatch):
    monkeypatch.delenv(ops.BACKEND_ENV, raising=False)
    monkeypatch.setattr(ops.cpu, "kernel_available", lambda: False)
    monkeypatch.setattr(ops.cpu, "_warned_no_kernel", False)
    with pytest.warns(RuntimeWarning, match="compiled kernel .* is not available"):
        assert ops.select_backend(_qkv()[0], None, 3).name == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        na2d(*_qkv(), 3)  # no second warning


def test_what_is_selected_is_what_runs(monkeypatch):
    """No backend hands a call to another: kernels above the compiled kernel's limit and
    attention dropout are the torch backend's in automatic mode, and errors when 'cpu' is asked for."""
    monkeypatch.delenv(ops.BACKEND_ENV, raising=False)
    big = ops.cpu.max_kernel_size() + 2
    q = torch.randn(1, big, big, 1, 4)
    selection = ops.select_backend(q, None, big)
    assert selection.name == "torch" and any(f"kernel_size {big}" in r for r in dict(selection.skipped)["cpu"])
    with pytest.raises(ValueError, match=f"kernel_size {big} > {big - 2}"):
        na2d(q, q, q, big, backend="cpu")
    q = torch.randn(1, 9, 9, 2, 4)
    assert ops.select_backend(q, None, 3, attn_dropout=0.1).name == "torch"
    with pytest.raises(ValueError, match="attention dropout"):
        na2d(q, q, q, 3, attn_drop=0.1, backend="cpu")
    with pytest.raises(ValueError, match=r"attn_drop must be in \[0, 1\)"):
        na2d(q, q, q, 3, attn_drop=1.0)


def test_debug_log_says_what_ran_and_why(monkeypatch, caplog):
    monkeypatch.delenv(ops.BACKEND_ENV, raising=False)
    with caplog.at_level("DEBUG", logger="dinat_backbone.ops"):
        na2d(*_qkv(), 3)
    expected = "cpu" if HAVE_KERNEL else "torch"
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"na2d: ran {expected} for shape=(1, 9, 9, 2, 4)" in m and "natten: needs CUDA" in m
               for m in messages), caplog.text


def test_head_dim_zero_is_a_clear_error():
    q = torch.randn(1, 9, 9, 2, 0)
    with pytest.raises(ValueError, match=r"heads and head_dim must be >= 1"):
        na2d(q, q, q, 3)


# ----------------------------------------------------------------------------------------------
# torch.compile traces the compiled kernel without graph breaks
# ----------------------------------------------------------------------------------------------
def test_cpu_kernel_under_torch_compile_fullgraph():
    K, d = 3, 2
    q, k, v, rpb = make_inputs(1, 8, 9, 2, 4, K, True, dtype=torch.float32)
    grad_out = torch.randn(1, 8, 9, 2, 4)

    def fn(q, k, v, rpb):
        return na2d(q, k, v, K, d, rpb, backend="cpu") * 2

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out_c, *grads_c = forward_and_grads(compiled, (q, k, v, rpb), grad_out)
    out_e, *grads_e = forward_and_grads(fn, (q, k, v, rpb), grad_out)
    assert torch.allclose(out_c, out_e, atol=1e-6)
    for gc, ge in zip(grads_c, grads_e):
        assert torch.allclose(gc, ge, atol=1e-5)


@pytest.mark.parametrize("dtypes", [(torch.bfloat16,) * 3, (torch.float32,) * 3, (torch.bfloat16, torch.float32,
                                                                                 torch.bfloat16), (torch.float16,) * 3])
def test_fake_tensor_shapes(dtypes):
    """The fake (meta) forward gives the kernel's shapes and dtypes: the saved weights are bfloat16 when
    q, k, v all are (the kernel stores them so), else float32."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def run(make):
        q, k, v = (make(2, 9, 10, 3, 4, dtype=dt) for dt in dtypes)
        return torch.ops.dinat.na2d_forward(q, k, v, None, 3, 1, 0.5, True)

    real_out, real_weights = run(torch.randn)
    with FakeTensorMode():
        out, weights = run(torch.empty)
    assert out.shape == real_out.shape == (2, 9, 10, 3, 4) and out.dtype == real_out.dtype == dtypes[0]
    assert weights.shape == real_weights.shape == (2, 9, 9, 10, 3)
    assert weights.dtype == real_weights.dtype == (torch.bfloat16 if set(dtypes) == {torch.bfloat16} else torch.float32)


# ----------------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_module_matches_reference_and_trains(backend):
    torch.manual_seed(0)
    m = NeighborhoodAttention2D(dim=12, num_heads=3, kernel_size=3, dilation=2, backend=backend).double()
    x = torch.randn(2, 7, 8, 12, dtype=torch.float64, requires_grad=True)
    out = m(x)
    assert out.shape == x.shape
    B, X, Y, C = x.shape
    q, k, v = m.qkv(x).view(B, X, Y, 3, 3, 4).unbind(3)
    expected = m.proj(na2d_reference(q, k, v, 3, 2, m.rpb, m.scale).reshape(B, X, Y, C))
    assert rel_err(out, expected) < TOL[torch.float64]
    out.square().sum().backward()
    assert m.rpb.grad is not None and m.qkv.weight.grad is not None and x.grad is not None
    g_out = torch.autograd.grad(expected.square().sum(), m.rpb)[0]
    assert rel_err(m.rpb.grad, g_out) < TOL[torch.float64]


def test_module_checks_input_and_config():
    m = NeighborhoodAttention2D(dim=8, num_heads=2, kernel_size=3)
    with pytest.raises(ValueError, match=r"expected a channels-last map \[B, X, Y, 8\]"):
        m(torch.randn(1, 8, 5, 5))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        NeighborhoodAttention2D(dim=10, num_heads=3)
    with pytest.raises(ValueError, match="odd integer"):
        NeighborhoodAttention2D(dim=8, num_heads=2, kernel_size=6)
    assert NeighborhoodAttention2D(dim=8, num_heads=2, bias=False).rpb is None


def test_module_attention_dropout_in_training():
    torch.manual_seed(0)
    m = NeighborhoodAttention2D(dim=8, num_heads=2, kernel_size=3, attn_drop=0.5)
    x = torch.randn(1, 6, 6, 8)
    m.train()
    m(x).sum().backward()
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    # in training the call still goes through na2d: its validation and the module's backend
    m.train()
    with pytest.raises(ValueError, match=r"axis X \(dim 1\) has size 2, smaller than kernel_size"):
        m(torch.randn(1, 2, 6, 8))
    m.backend = "cpu"
    with pytest.raises(ValueError, match="backend='cpu' cannot serve this call: attention dropout"):
        m(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K, d, B, X, Y", [(7, 1, 2, 23, 19), (5, 3, 1, 31, 17), (3, 2, 3, 6, 40)])
def test_cpu_kernel_results_do_not_depend_on_the_thread_count(dtype, K, d, B, X, Y):
    """The kernel's threads split the tasks (query row groups, key rows) with work stealing: a
    thread that is done takes tasks off another's share. Whichever thread runs a task, the results
    are the same bits (one thread, two, and more threads than cores, where shares finish unevenly
    and get stolen from); only drpb, summed per thread, may differ in its last float64 digits."""
    if not ops.cpu_kernel_available():
        pytest.fail("the compiled CPU kernel is not built (python setup.py build_ext --inplace)")
    gen = torch.Generator().manual_seed(11)
    q, k, v, go = (torch.randn(B, X, Y, 3, 8, generator=gen).to(dtype) for _ in range(4))
    rpb = torch.randn(3, 2 * K - 1, 2 * K - 1, generator=gen).to(dtype)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3, 7):
            torch.set_num_threads(threads)
            results.append(forward_and_grads(lambda q, k, v, rpb: na2d(q, k, v, K, d, rpb=rpb, backend="cpu"),
                                             (q, k, v, rpb), go))
    finally:
        torch.set_num_threads(before)
    first = results[0]
    for other in results[1:]:
        for a, b in zip(first[:4], other[:4]):  # out, dq, dk, dv
            assert torch.equal(a, b)
        torch.testing.assert_close(other[4], first[4], rtol=1e-6, atol=1e-6)  # drpb



@pytest.mark.parametrize("d", [1, 2])
def test_kernel_backward_accepts_weights_without_vector_padding(d):
    """na2d_backward reads the saved weights with full vectors past their end; weights that do not
    come from na2d_forward (an exact-size clone) are copied into a padded buffer, same result."""
    q, k, v, rpb = make_inputs(1, 14, 15, 2, 8, 7, True, dtype=torch.float32)
    grad_out = torch.randn_like(q)
    _, weights = torch.ops.dinat.na2d_forward(q, k, v, rpb, 7, d, 8**-0.5, True)
    padded = torch.ops.dinat.na2d_backward(grad_out, q, k, v, weights, rpb, 7, d, 8**-0.5)
    exact = torch.ops.dinat.na2d_backward(grad_out, q, k, v, weights.clone(), rpb, 7, d, 8**-0.5)
    for a, b in zip(padded, exact):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Second derivatives, empty batches, constructor arguments (issue 20)
# ----------------------------------------------------------------------------------------------
def _plain_na2d(q, k, v, K, d, rpb, scale):
    """The op in plain tensor ops (tests/reference.py): autograd differentiates it any number of times."""
    return na2d_reference(q, k, v, K, d, rpb, scale)


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_hessian_matches_plain_ops(backend):
    """The Hessian of (na2d(q, k, v, 3, 1, rpb) ** 2).sum() in q through each backend (double
    backward, create_graph=True) against torch.autograd.functional.hessian of plain ops in float64;
    the true Hessian is far from zero (it reaches ~4)."""
    B, X, Y, H, D, K = 1, 3, 3, 1, (16 if backend == "triton" else 2), 3
    dtype = torch.float32 if backend == "triton" else torch.float64  # triton has no float64
    q, k, v, rpb = make_inputs(B, X, Y, H, D, K, True, dtype=torch.float64, seed=3)
    scale = D ** -0.5
    expected = torch.autograd.functional.hessian(lambda t: (_plain_na2d(t, k, v, K, 1, rpb, scale) ** 2).sum(), q)
    assert expected.abs().max() > 0.5

    def loss(t):
        return (na2d(t, k.to(dtype), v.to(dtype), K, 1, rpb.to(dtype), scale, backend=backend) ** 2).sum()

    got = torch.autograd.functional.hessian(loss, q.to(dtype))
    assert rel_err(got, expected) <= (1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradgradcheck(backend):
    q, k, v, rpb = (t.requires_grad_() for t in make_inputs(1, 4, 6, 1, 2, 3, True, seed=4))
    assert torch.autograd.gradgradcheck(lambda *a: na2d(*a[:3], 3, 1, a[3], backend=backend), (q, k, v, rpb))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    q = torch.randn(0, 9, 9, 2, 4, requires_grad=True)
    out = na2d(q, q, q, 3, 1, torch.zeros(2, 5, 5), backend=backend)
    out.sum().backward()
    assert out.shape == q.shape and q.grad.shape == q.shape


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=8, num_heads=0), r"num_heads must be an integer >= 1, got 0"),
    (dict(dim=8, num_heads=2, kernel_size=7.0), r"kernel_size must be an integer >= 3, got 7.0 \(float\)"),
    (dict(dim=8.0, num_heads=2), r"dim must be an integer >= 1, got 8.0"),
    (dict(dim=8, num_heads=2, dilation=1.5), r"dilation must be an integer >= 1, got 1.5"),
    (dict(dim=8, num_heads=True), r"num_heads must be an integer >= 1, got True"),
])
def test_module_integer_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeighborhoodAttention2D(**kwargs)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("K,d,X,Y", [(3, 1, 7, 9), (5, 2, 13, 10), (7, 3, 21, 25)])
def test_window_rule_is_the_geometry(backend, K, d, X, Y):
    """Every backend's window is geometry.neighborhood_indices' (the one place the rule is written):
    with q = 0 the attention is uniform over the window, and v holding each position's coordinates
    makes the output the mean key position per axis, which fixes the window (K keys, step d)."""
    keys_x, _ = ops.neighborhood_indices(X, K, d)
    keys_y, _ = ops.neighborhood_indices(Y, K, d)
    v = torch.zeros(1, X, Y, 1, 2, dtype=torch.float64)
    v[..., 0] = torch.arange(X, dtype=torch.float64)[:, None, None]
    v[..., 1] = torch.arange(Y, dtype=torch.float64)[None, :, None]
    q = torch.zeros_like(v)
    out = na2d(q, q, v, K, d, backend=backend)[0, :, :, 0]
    torch.testing.assert_close(out[..., 0], keys_x.double().mean(1)[:, None].expand(X, Y))
    torch.testing.assert_close(out[..., 1], keys_y.double().mean(1)[None, :].expand(X, Y))


# ----------------------------------------------------------------------------------------------
# The qkv projection's gradient: the kernel's packed dq / dk / dv handed on without a stack
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qkv_gradient_is_the_kernels_packed_buffer(dtype):
    """The compiled kernel's backward writes dq, dk, dv into one [B, X, Y, 3, heads, head_dim]
    buffer; split_qkv hands it on as the qkv projection's gradient (no stack: the profiler sees no
    aten::stack / cat in backward), with the values of the plain unbind path."""
    from dinat_backbone.ops.modules import split_qkv

    torch.manual_seed(0)
    B, X, Y, H, D = 2, 9, 11, 2, 8
    qkv = torch.randn(B, X, Y, 3 * H * D).to(dtype).requires_grad_()
    rpb = torch.randn(H, 13, 13, requires_grad=True)
    grad_out = torch.randn(B, X, Y, H, D).to(dtype)

    def run(split):
        qkv.grad = None
        q, k, v = split(qkv)
        out = na2d(q, k, v, 7, 1, rpb, backend="cpu")
        with torch.profiler.profile() as prof:
            out.backward(grad_out)
        return qkv.grad, {e.key for e in prof.key_averages()}

    packed, ops_seen = run(lambda t: split_qkv(t, H, D))
    assert not ops_seen & {"aten::stack", "aten::cat"}, ops_seen
    stacked, ops_seen = run(lambda t: t.reshape(B, X, Y, 3, H, D).unbind(3))
    assert ops_seen & {"aten::stack", "aten::cat"}
    assert packed.shape == qkv.shape and packed.dtype == dtype
    torch.testing.assert_close(packed, stacked, rtol=0, atol=0)


def test_split_qkv_backward_with_unused_parts_and_foreign_gradients():
    """Gradients that are not the kernel's buffer (another backend's, or None for an unused part)
    are stacked: the same values as unbind's own backward."""
    from dinat_backbone.ops.modules import split_qkv

    torch.manual_seed(0)
    qkv = torch.randn(1, 5, 6, 3 * 2 * 4, dtype=torch.float64, requires_grad=True)
    q, k, v = split_qkv(qkv, 2, 4)
    (q * 2 + k.square()).sum().backward()
    expected = torch.stack([torch.full_like(q, 2.0), 2 * k.detach(), torch.zeros_like(v)], dim=3).reshape(qkv.shape)
    torch.testing.assert_close(qkv.grad, expected, rtol=0, atol=0)
