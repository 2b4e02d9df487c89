"""torch.compile, bfloat16 autocast and ONNX export of the op and the backbone.

Timings live in tools/benchmark.py; these tests check correctness only, on tiny models (torch.compile
and the ONNX exporter are slow on 2 cores: the file takes about 2-3 minutes).

Documented tolerances:
* torch.compile (inductor) vs eager, float32: max abs error <= 1e-4.
* torch.autocast('cpu', dtype=torch.bfloat16) vs float32, per output map:
  relative L2 error ||y_bf16 - y_fp32|| / ||y_fp32|| <= 2e-2 and
  max abs error <= 3e-2 * max |y_fp32| (measured on the model below: about 0.5-1 % and 0.6-0.9 %).
* ONNX (onnxruntime, float32) vs PyTorch: max abs error <= 1e-4.
"""
import warnings

import pytest
import torch

from dinat_backbone import ops
from dinat_backbone.export import axis_indices, export_mode, na2d_export

from conftest import load_tool
from reference import axis_neighbours, na2d_reference


def small_model(**kw):
    from dinat_backbone.dinat import DiNAT

    torch.manual_seed(0)
    # dilations chosen so that 64x96 pads every stage and 160x250 pads only some axes / stages
    kw.setdefault("dilations", [[4], [1, 3], [2], [1]])
    m = DiNAT(embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.0, **kw)
    # non-trivial biases and layer norms, so that the padding token and the norms matter
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def max_err(a, b):
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))


# ----------------------------------------------------------------------------------------------
# export-friendly op
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,K,d", [(7, 7, 1), (13, 3, 2), (20, 5, 3), (29, 7, 4), (9, 3, 3)])
def test_axis_indices_match_formula(length, K, d):
    keys, rpb_idx = axis_indices(length, K, d)
    for i in range(length):
        k_ref, r_ref = axis_neighbours(i, length, K, d)
        assert keys[i].tolist() == k_ref
        assert rpb_idx[i].tolist() == r_ref


@pytest.mark.parametrize("shape,K,d", [((2, 9, 13, 2, 4), 3, 2), ((1, 21, 14, 3, 8), 7, 2),
                                       ((1, 15, 16, 2, 4), 5, 3), ((1, 7, 7, 1, 4), 7, 1)])
@pytest.mark.parametrize("with_rpb", [True, False])
def test_na2d_export_matches_reference(shape, K, d, with_rpb):
    torch.manual_seed(0)
    q, k, v = (torch.randn(*shape, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(shape[3], 2 * K - 1, 2 * K - 1, dtype=torch.float64) if with_rpb else None
    ref = na2d_reference(q, k, v, K, d, rpb)
    torch.testing.assert_close(na2d_export(q, k, v, K, d, rpb), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("X,Y,K,d", [(5, 9, 3, 2), (10, 4, 5, 3), (3, 12, 5, 3)])
def test_na2d_export_small_map_padding(X, Y, K, d):
    """Padding folded into the attention == zero-padding q/k/v's *input* to K*d and cropping."""
    torch.manual_seed(0)
    B, H, D = 2, 2, 4
    q, k, v = (torch.randn(B, X, Y, H, D, dtype=torch.float64) for _ in range(3))
    pk, pv, pq = (torch.randn(H, D, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(H, 2 * K - 1, 2 * K - 1, dtype=torch.float64)
    Xp, Yp = max(X, K * d), max(Y, K * d)

    def pad(t, token):
        out = token.expand(B, Xp, Yp, H, D).clone()
        out[:, :X, :Y] = t
        return out

    ref = na2d_reference(pad(q, pq), pad(k, pk), pad(v, pv), K, d, rpb)[:, :X, :Y]
    got = na2d_export(q, k, v, K, d, rpb, pad_key=pk, pad_value=pv)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_export_mode_model_parity():
    """Inside export_mode every attention runs the export backend (one branch-free graph for maps
    that need padding and maps that do not); the outputs equal the eager model's."""
    model = small_model()
    for shape in [(1, 3, 64, 96), (2, 3, 160, 250), (1, 3, 33, 47)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x)
            with export_mode():
                got = model(x)
        assert max_err(ref, got) <= 1e-5, shape


def _selected(q):
    return ops.select_backend(q, None, 3).name


def test_export_mode_nests_and_restores():
    q = torch.randn(1, 9, 9, 2, 4)
    eager = _selected(q)
    assert eager != "export" and not ops.exporting()
    with export_mode():
        assert _selected(q) == "export"
        with export_mode():
            assert _selected(q) == "export"
        assert _selected(q) == "export"  # the inner exit does not end the outer context
    assert _selected(q) == eager and not ops.exporting()
    with pytest.raises(RuntimeError, match="boom"):
        with export_mode():
            raise RuntimeError("boom")
    assert _selected(q) == eager


def test_export_mode_is_local_to_the_thread():
    """A forward in another thread while one thread exports runs the normal backends."""
    import threading

    model = small_model()
    x = torch.randn(1, 3, 64, 96)
    inside, release = threading.Event(), threading.Event()
    seen = {}

    def exporter():
        with export_mode():
            seen["exporter"] = _selected(torch.randn(1, 9, 9, 2, 4))
            inside.set()
            release.wait(30)

    t = threading.Thread(target=exporter)
    t.start()
    try:
        assert inside.wait(30)
        seen["other"] = _selected(torch.randn(1, 9, 9, 2, 4))
        with torch.no_grad():
            ref = model(x)
    finally:
        release.set()
        t.join()
    assert seen["exporter"] == "export" and seen["other"] != "export"
    with torch.no_grad():
        assert max_err(ref, model(x)) == 0.0


def test_forward_hooks_see_every_attention_call():
    """Eval, training (the memory-lean path) and export all run through NeighborhoodAttention2D.forward."""
    model = small_model()
    calls = []
    for m in model.modules():
        if isinstance(m, ops.NeighborhoodAttention2D):
            m.register_forward_hook(lambda mod, args, out: calls.append(out.shape))
    n_attn = sum(model.depths)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        model(x)
        with export_mode():
            model(x)
    model.train()
    sum(o.sum() for o in model(x)).backward()
    assert len(calls) == 3 * n_attn


# ----------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------
def test_attention_compiles_without_graph_breaks():
    """fullgraph=True fails on any graph break; forward and backward of the attention module
    (the default backend, i.e. the compiled kernel's custom op when built)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = ops.NeighborhoodAttention2D(32, 2, kernel_size=7, dilation=2)
    x = torch.randn(2, 15, 17, 32, requires_grad=True)
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = cm(x)
    y.square().sum().backward()
    g, grpb = x.grad.clone(), m.rpb.grad.clone()
    x.grad = None
    m.zero_grad()
    y_ref = m(x)
    y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g, x.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grpb, m.rpb.grad, rtol=1e-4, atol=1e-4)


def test_model_has_no_graph_breaks():
    torch._dynamo.reset()
    model = small_model()
    explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 64, 96))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_model_matches_eager():
    """Inductor-compiled backbone (forward, eval) matches eager to 1e-4 in float32."""
    torch._dynamo.reset()
    model = small_model()
    x = torch.randn(1, 3, 64, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(model)
        with torch.no_grad():
            got = compiled(x)
            ref = model(x)
    assert len(got) == len(ref) == 4
    assert max_err(got, ref) <= 1e-4
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------
# bfloat16 autocast
# ----------------------------------------------------------------------------------------------
def test_bf16_autocast_close_to_fp32():
    model = small_model()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        assert torch.isfinite(g).all()
        diff = g.float() - r
        assert float(diff.norm() / r.norm()) <= 2e-2
        assert float(diff.abs().max()) <= 3e-2 * float(r.abs().max())


def test_bf16_autocast_backward_runs():
    model = small_model().train()
    x = torch.randn(1, 3, 64, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = model(x)
    sum(o.float().mean() for o in outs).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.levels[0].blocks[0].attn.rpb.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------
def _export_tool():
    return load_tool("export_onnx")


def test_onnx_round_trip_fixed(tmp_path):
    import onnx

    tool = _export_tool()
    model = small_model()
    path = str(tmp_path / "model.onnx")
    x = torch.randn(1, 3, 64, 96)
    names = tool.export(model, x, path, dynamic=False)
    proto = onnx.load(path)
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node), "custom operators in the graph"
    for shape, errs in tool.check(model, path, [x], names):
        assert max(errs) <= 1e-4, (shape, errs)


def test_export_onnx_cli_dynamic(tmp_path, capsys, monkeypatch):
    """The command line with --dynamic: one graph, checked by the tool on the export size (every
    stage pads) and on another batch and size (only some stages / axes pad); exit code 0 means
    max abs error <= 1e-4. The tiny model stands in for --arch to keep the test fast."""
    import onnx

    tool = _export_tool()
    model = small_model()
    monkeypatch.setattr(tool, "build_model", lambda args: model)
    path = tmp_path / "dyn.onnx"
    rc = tool.main(["--shape", "64", "96", "--dynamic", "-o", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS" in out and out.count("[check] input") == 2, out
    proto = onnx.load(str(path))
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node), "custom operators in the graph"
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and isinstance(dims[3], str), dims
    # a third size straight through onnxruntime
    x = torch.randn(3, 3, 47, 129)
    (_, errs), = tool.check(model, str(path), [x])
    assert max(errs) <= 1e-4, errs
