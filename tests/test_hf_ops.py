"""dinat_backbone.ops.natten2dqkrpb / natten2dav (NATTEN <= 0.17.4's split ops, heads-first layout)
against the float64 reference written from tests/reference's neighbour tables and against
natten-mps's old-API ops; gradients, dtypes, bad input."""
import pytest
import torch

from dinat_backbone.ops import na2d, natten2dav, natten2dqkrpb

from reference import neighbour_tables

pytestmark = pytest.mark.usefixtures("single_thread")

GRID = [(K, d) for K in (3, 5, 7, 9, 11, 13) for d in (1, 2, 3, 4)]


def reference_split(q, k, v, rpb, K, d):
    """float64 logits ``[B, H, X, Y, K*K]`` and ``softmax(logits) . v`` from the neighbour tables."""
    q, k, v = (t.double() for t in (q, k, v))
    _, _, X, Y, _ = q.shape
    ky, ry = neighbour_tables(X, K, d)
    kx, rx = neighbour_tables(Y, K, d)
    rows, cols = ky[:, :, None, None], kx[None, None, :, :]
    kn, vn = k[:, :, rows, cols], v[:, :, rows, cols]  # [B, H, X, K, Y, K, D]
    logits = torch.einsum("bhxyd,bhxaytd->bhxyat", q, kn)
    if rpb is not None:
        logits = logits + rpb.double()[:, ry[:, None, :, None], rx[None, :, None, :]]
    attn = logits.flatten(-2).softmax(-1)
    return logits.flatten(-2), torch.einsum("bhxyat,bhxaytd->bhxyd", attn.unflatten(-1, (K, K)), vn)


def inputs(K, d, use_rpb, dtype=torch.float32, B=1, H=2, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X, Y = K * d + 1, K * d + 3
    q, k, v = (torch.randn(B, H, X, Y, D, generator=g, dtype=dtype) for _ in range(3))
    rpb = torch.randn(H, 2 * K - 1, 2 * K - 1, generator=g, dtype=dtype) if use_rpb else None
    return q, k, v, rpb


@pytest.mark.parametrize("use_rpb", [True, False], ids=["rpb", "no-rpb"])
@pytest.mark.parametrize("K,d", GRID, ids=[f"K{K}-d{d}" for K, d in GRID])
def test_split_ops_match_float64_reference_and_natten_mps(K, d, use_rpb):
    from natten_mps.compat import v014

    q, k, v, rpb = inputs(K, d, use_rpb)
    logits = natten2dqkrpb(q, k, rpb, K, d)
    attn = logits.softmax(-1)
    out = natten2dav(attn, v, K, d)
    ref_logits, ref_out = reference_split(q, k, v, rpb, K, d)
    assert logits.dtype == out.dtype == torch.float32
    torch.testing.assert_close(logits.double(), ref_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=1e-5)
    # natten-mps's natten2dqkrpb needs an rpb: zeros are the same as none
    mps_rpb = rpb if use_rpb else torch.zeros(q.shape[1], 2 * K - 1, 2 * K - 1)
    torch.testing.assert_close(logits, v014.natten2dqkrpb(q, k, mps_rpb, K, d), rtol=0, atol=1e-5)
    torch.testing.assert_close(out, v014.natten2dav(attn, v, K, d), rtol=0, atol=1e-5)


@pytest.mark.parametrize("K,d", [(3, 2), (5, 1), (7, 3)])
def test_split_ops_compose_to_the_fused_op(K, d):
    q, k, v, rpb = inputs(K, d, True, H=3, D=8)
    scale = 8 ** -0.5
    out = natten2dav(natten2dqkrpb(q * scale, k, rpb, K, d).softmax(-1), v, K, d)
    heads_last = [t.permute(0, 2, 3, 1, 4) for t in (q, k, v)]
    torch.testing.assert_close(out.permute(0, 2, 3, 1, 4), na2d(*heads_last, K, d, rpb=rpb), rtol=0, atol=1e-5)


@pytest.mark.parametrize("K,d", [(3, 1), (5, 2), (3, 4)])
def test_split_op_gradients_match_float64_reference(K, d):
    q, k, v, rpb = (t.requires_grad_() for t in inputs(K, d, True, dtype=torch.float64, B=2))
    out = natten2dav(natten2dqkrpb(q, k, rpb, K, d).softmax(-1), v, K, d)
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v, rpb))
    _, ref = reference_split(q, k, v, rpb, K, d)
    ref_grads = torch.autograd.grad((ref * weight).sum(), (q, k, v, rpb))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


def test_split_ops_gradcheck_and_double_backward():
    q, k, v, rpb = (t.requires_grad_() for t in inputs(3, 1, True, dtype=torch.float64, H=1, D=2))
    q, k, v = (t[:, :, :4, :5].detach().requires_grad_() for t in (q, k, v))

    def attention(q, k, v, rpb):
        return natten2dav(natten2dqkrpb(q, k, rpb, 3, 1).softmax(-1), v, 3, 1)

    assert torch.autograd.gradcheck(attention, (q, k, v, rpb))
    assert torch.autograd.gradgradcheck(attention, (q, k, v, rpb))


def test_split_ops_half_precision_and_autocast():
    q, k, v, rpb = inputs(5, 2, True)
    ref = natten2dav(natten2dqkrpb(q, k, rpb, 5, 2).softmax(-1), v, 5, 2)
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    logits = natten2dqkrpb(qb, kb, rpb, 5, 2)
    assert logits.dtype == torch.bfloat16  # the inputs' dtype, computed in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = natten2dqkrpb(qb, kb, rpb, 5, 2)
        out = natten2dav(logits.float().softmax(-1), vb, 5, 2)
    assert out.dtype == torch.float32  # promoted like an elementwise op: float32 weights, bfloat16 values
    assert (out - ref).abs().max() < 0.05


@pytest.mark.parametrize("call,match", [
    (lambda q, r: natten2dqkrpb(q.permute(0, 2, 3, 1, 4)[..., 0], q, r, 3, 1), "heads-first layout"),
    (lambda q, r: natten2dqkrpb(q, q[:, :, :-1], r, 3, 1), "same shape|does not match"),
    (lambda q, r: natten2dqkrpb(q, q, r[:, :-1], 3, 1), r"rpb must have shape .*\[2, 5, 5\]"),
    (lambda q, r: natten2dqkrpb(q, q, r, 4, 1), "odd integer"),
    (lambda q, r: natten2dqkrpb(q, q, r, 3, 0), "dilation must be an integer >= 1"),
    (lambda q, r: natten2dqkrpb(q, q, r, 3, 4), "smaller than kernel_size \\* dilation .*maybe_pad"),
    (lambda q, r: natten2dav(torch.rand(1, 2, 9, 10, 8), q, 3, 1), "kernel_size\\*\\*2 = 9"),
    (lambda q, r: natten2dav(torch.rand(1, 2, 9, 9, 9), q, 3, 1), "does not match"),
    (lambda q, r: natten2dqkrpb(q.long(), q.long(), None, 3, 1), "floating-point"),
])
def test_split_ops_bad_input_names_the_fix(call, match):
    q = torch.randn(1, 2, 9, 10, 4)
    with pytest.raises(ValueError, match=match):
        call(q, torch.randn(2, 5, 5))
