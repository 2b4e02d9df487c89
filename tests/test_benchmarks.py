"""The benchmarks' own parts: the flex_attention peer (tools/flex_peer.py) against the float64
reference and its block mask against the geometry, the mask's memory at DiNAT's stage-1 COCO map,
the one table of targets, and ``tools/benchmark.py --plot``. Speed itself is not asserted here."""
import os
import struct
import sys
import tracemalloc

import pytest
import torch

from conftest import TOOLS, load_tool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOOLS)
import flex_peer  # noqa: E402
from bench_common import TARGETS, cpu_allocator_peak  # noqa: E402
from reference import na2d_reference, neighbour_tables  # noqa: E402


def _neighbour_pairs(X, Y, K, d):
    """Dense ``[X*Y, X*Y]`` neighbour-pair table of the map, from the reference's tables."""
    keys_x, keys_y = neighbour_tables(X, K, d)[0], neighbour_tables(Y, K, d)[0]
    pairs = torch.zeros(X, Y, X, Y, dtype=torch.bool)
    for i in range(X):
        for j in range(Y):
            pairs[i, j][keys_x[i][:, None], keys_y[j][None, :]] = True
    return pairs.reshape(X * Y, X * Y)


@pytest.mark.parametrize("B,X,Y,K,d", [(1, 24, 30, 5, 1), (2, 13, 17, 3, 2), (1, 29, 23, 7, 3)])
def test_flex_peer_block_mask_is_the_neighbourhood(B, X, Y, K, d):
    """Pair by pair (the mask_mod over the folded grid, every batch entry) and block by block (the
    kv block tables), the peer's mask is the reference's neighbourhood: no pair missing, none extra,
    and no block listed that holds no neighbour pair. No compilation involved."""
    from torch.nn.attention.flex_attention import create_mask

    mask = flex_peer.block_mask(B, X, Y, K, d)
    gx, gy = -(-X // d), -(-Y // d)
    n = gx * gy
    dense = create_mask(mask.mask_mod, B * d * d, 1, n, n, device="cpu")  # [B d^2, 1, n, n]
    expected = _neighbour_pairs(X, Y, K, d).view(X, Y, X, Y)
    for b in range(B * d * d):
        rx, ry = divmod(b % (d * d), d)
        lx, ly = len(range(rx, X, d)), len(range(ry, Y, d))
        got = dense[b, 0].view(gx, gy, gx, gy)
        # real queries: exactly their neighbours, all inside the class's extent
        want = expected[rx::d, ry::d][:, :, rx::d, ry::d]
        assert torch.equal(got[:lx, :ly, :lx, :ly], want), (b, rx, ry)
        assert not got[:lx, :ly, lx:].any() and not got[:lx, :ly, :, ly:].any()
        # grid padding queries still have a window (no empty softmax rows), of real keys only
        assert (got.reshape(n, n).sum(-1) == K * K).all()
    # the block tables: a block is listed iff it holds a neighbour pair
    pad = -(-n // flex_peer.BLOCK) * flex_peer.BLOCK
    padded = torch.zeros(B * d * d, pad, pad, dtype=torch.bool)
    padded[:, :n, :n] = dense[:, 0]
    nb = pad // flex_peer.BLOCK
    used = padded.view(B * d * d, nb, flex_peer.BLOCK, nb, flex_peer.BLOCK).any(4).any(2)
    assert torch.equal(mask.to_dense()[:, 0].bool(), used)


@pytest.mark.parametrize("B,X,Y,H,D,K,d", [(1, 24, 30, 2, 8, 5, 1), (2, 13, 17, 2, 16, 3, 2)])
def test_flex_peer_forward_matches_float64_reference(B, X, Y, H, D, K, d):
    """Compiled flex_attention on CPU (float32) with the peer's block mask and RPB score_mod against
    the brute-force float64 reference on the same inputs: maps of several 128-token blocks, and a
    dilation that does not divide the map (classes of unequal extent), batch 2, rpb."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, X, Y, H, D, generator=gen, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(H, 2 * K - 1, 2 * K - 1, generator=gen, dtype=torch.float64)
    ref = na2d_reference(q, k, v, K, d, rpb)
    out = flex_peer.flex_na2d(q.float(), k.float(), v.float(), K, d, rpb.float())
    assert out.shape == ref.shape and out.dtype == torch.float32
    err = float((out.double() - ref).abs().max() / ref.abs().max())
    assert err <= 1e-5, err


def test_flex_peer_mask_build_memory_at_dinat_stage1_coco():
    """The block mask of a 200 x 304 map (DiNAT stage 1 at 800 x 1216; K = 7) is built from the
    geometry in well under 100 MB (a dense N x N bool mask alone would be 3.7 GB): tensors through
    PyTorch's allocator, Python objects through tracemalloc. Both the d = 1 mask (475 x 475 blocks)
    and the d = 28 one (784 folded classes per map, batch 2)."""
    for batch, dilation, q_blocks in ((1, 1, 475), (2, 28, 1)):
        flex_peer.block_mask.cache_clear()
        built = {}
        tracemalloc.start()
        try:
            tensor_peak = cpu_allocator_peak(lambda: built.setdefault(
                "mask", flex_peer.block_mask(batch, 200, 304, 7, dilation)))
            python_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        mask = built["mask"]
        assert mask.kv_indices.shape == (batch * dilation ** 2, 1, q_blocks, q_blocks)
        assert tensor_peak + python_peak < 100 * 2 ** 20, (dilation, tensor_peak, python_peak)
    flex_peer.block_mask.cache_clear()


def test_benchmark_targets_are_named_in_one_table():
    """Every verdict line comes from bench_common.TARGETS (figure, bound), and no line names a
    tracker issue: the backbone CPU targets, the GPU backbone target and the op's GPU targets
    (with the flex peer), judged on the figure as printed."""
    bm = load_tool("benchmark")
    swin = {"fwd_med": 1.0, "fwdbwd_med": 1.0, "mem_fwdbwd": 1000.0}
    res = {"swin": swin, "tiny": {"fwd_med": 0.9, "fwdbwd_med": 0.95, "mem_fwdbwd": 900.0},
           "mini": {"fwd_med": 0.7, "fwdbwd_med": 0.7, "mem_fwdbwd": 700.0}, "tiny_cp": {"mem_fwdbwd": 500.0}}
    args = bm.parse_args([])
    lines = bm.targets([bm.DEFAULT_SHAPES[0]], [res], args)
    names = [n for n in TARGETS if n.startswith("cpu_") and not n.startswith("cpu_bf16_")]
    assert len(lines) == len(names)
    for name, line in zip([n for n, _, _, dtype in bm.CPU_TARGET_FIGURES if dtype is None] + ["cpu_with_cp_cut"],
                          lines):
        t = TARGETS[name]
        assert f"] {t.figure} at 1×3×800×1216: " in line and f"(target {t.op} {t.limit}" in line, line
        assert line.startswith("  [PASS]"), line
    gpu = bm.gpu_targets([bm.DEFAULT_SHAPES[0]], [res], torch.bfloat16, args)
    assert gpu == [f"  [PASS] {TARGETS['gpu_tiny_fwdbwd'].figure} at 1×3×800×1216: 0.95 (target ≤ 1.0)"]

    bna = load_tool("benchmark_na")
    times = {"triton": {"fwd": 1.0, "fwd+bwd": 3.0}, "flex": {"fwd": 1.96, "fwd+bwd": 6.3},
             "torch": {"fwd": 20.0, "fwd+bwd": None}, "dense SDPA": {"fwd": 30.0, "fwd+bwd": 90.0}}
    text = "\n".join(bna.gpu_target_lines("(2, 200, 304, 6, 32) d=28", times, floor=0.5))
    assert "[PASS] triton forward / memory floor at (2, 200, 304, 6, 32) d=28: 2.0x (<= 4x)" in text
    assert "[FAIL] flex / triton fwd at (2, 200, 304, 6, 32) d=28: 2.0x (>= 2x)" not in text  # 1.96 prints 2.0
    assert "[PASS] flex / triton fwd at (2, 200, 304, 6, 32) d=28: 2.0x (>= 2x)" in text
    assert "[PASS] flex / triton fwd+bwd" in text and "[FAIL] torch / triton fwd+bwd" in text
    assert "[PASS] dense SDPA / triton fwd" in text and "not measured" in text
    assert "issue" not in text.lower() and "issue" not in "\n".join(lines + gpu).lower()


def test_benchmark_bf16_run_judges_the_bf16_targets():
    """``benchmark.py --dtype bfloat16`` judges DiNAT-T / Swin-T time against the ``cpu_bf16_*`` rows
    (forward ≤ 0.85, fwd+bwd ≤ 0.9), not the float32 bounds; the float32-only targets (memory,
    DiNAT-mini, with_cp) are printed as information; a float32 run judges no bf16 row; a CUDA run
    judges no CPU target."""
    bm = load_tool("benchmark")
    swin = {"fwd_med": 1.0, "fwdbwd_med": 1.0, "mem_fwdbwd": 1000.0}
    res = {"swin": swin, "tiny": {"fwd_med": 0.84, "fwdbwd_med": 0.95, "mem_fwdbwd": 900.0},
           "mini": {"fwd_med": 0.7, "fwdbwd_med": 0.7, "mem_fwdbwd": 700.0}, "tiny_cp": {"mem_fwdbwd": 500.0}}
    fwd, fwdbwd = TARGETS["cpu_bf16_tiny_fwd"], TARGETS["cpu_bf16_tiny_fwdbwd"]
    assert (fwd.limit, fwdbwd.limit) == (0.85, 0.9)
    tag = "1×3×800×1216"
    for dtype_arg in ("bfloat16", "bf16"):
        lines = bm.targets([bm.DEFAULT_SHAPES[0]], [res], bm.parse_args(["--dtype", dtype_arg]))
        judged = [line for line in lines if line.startswith(("  [PASS]", "  [FAIL]"))]
        assert judged == [f"  [PASS] {fwd.figure} at {tag}: 0.84 (target ≤ 0.85)",
                          f"  [FAIL] {fwdbwd.figure} at {tag}: 0.95 (target ≤ 0.9)"], lines
        assert f"  not judged at {tag}, float32 targets: this run is bfloat16 autocast" in lines
        info = [line for line in lines if line.startswith("  [info]")]
        float32_only = [n for n, _, _, dtype in bm.CPU_TARGET_FIGURES if dtype is None and n not in
                        ("cpu_tiny_fwd", "cpu_tiny_fwdbwd")] + ["cpu_with_cp_cut"]
        assert len(info) == len(float32_only) == 5
        for name, line in zip(float32_only, info):
            assert f"] {TARGETS[name].figure} at {tag}: " in line and f"(target {TARGETS[name].op} " in line
        for figure in (fwd.figure, fwdbwd.figure):  # once, against the bf16 bound, not the float32 one too
            assert sum(f"] {figure} at {tag}: " in line for line in lines) == 1

    float32_lines = bm.targets([bm.DEFAULT_SHAPES[0]], [res], bm.parse_args([]))
    assert not any("0.85)" in line or "0.9)" in line or "[info]" in line for line in float32_lines)
    cuda_lines = bm.targets([bm.DEFAULT_SHAPES[0]], [res], bm.parse_args(["--device", "cuda"]))
    assert cuda_lines[0] == f"  not judged at {tag}: a cuda run: these targets are for the CPU"
    assert not any(line.startswith(("  [PASS]", "  [FAIL]")) for line in cuda_lines)


def test_benchmark_plot_quick_writes_a_png(tmp_path, capsys):
    """``benchmark.py --plot PNG --quick``: a real (small) sweep, drawn into a PNG, with the figures
    printed as a table."""
    bm = load_tool("benchmark")
    path = tmp_path / "sweep.png"
    assert bm.main(["--plot", str(path), "--quick", "--plot-sizes", "64", "96", "--models", "mini"]) == 0
    out = capsys.readouterr().out
    assert "| 64×64 |" in out and "| 96×96 |" in out and f"plot written to {path}" in out
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 400
    # the sweep's dilations follow the image: at 64 x 64 (stage maps 16 / 8 / 4 / 2) at most 16 // 7 = 2
    args = bm.parse_args(["--plot", str(path), "--quick"])
    assert not args.cp and args.compile == [] and args.models == ["tiny", "swin"]
    assert max(max(s) for s in bm.PlotDilations(64)("tiny")) == 2
    assert bm.PlotDilations(1344)("tiny") == bm.PlotDilations(800)("tiny")  # capped by 'coco' itself (28)


def test_gpu_targets_code_path_runs_on_cpu(capsys):
    """gpu_check.sh's op step (benchmark_na's GPU targets with the profiler tables) end to end on one
    small map, on CPU: triton in Triton's interpreter, the torch backend, dense SDPA, and the flex
    peer, whose forward runs compiled on CPU and whose backward flex does not offer on CPU (recorded
    as that error, not a crash). Nothing is judged from these figures; the code path is the test."""
    bna = load_tool("benchmark_na")
    records = bna.gpu_targets(1, device="cpu", shapes=[(1, 14, 15, 2, 16, 2)], profile=True, copy_bytes=2 ** 20)
    out = capsys.readouterr().out
    (rec,) = records
    for name in ("triton", "dense SDPA", "torch", "flex"):
        assert rec[f"{name}_fwd_ms"] > 0, rec
    assert rec["triton_fwd+bwd_ms"] > 0 and rec["torch_fwd+bwd_ms"] > 0
    assert rec["flex_fwd+bwd_ms"] is None and "backward on CPU" in rec["flex_fwd+bwd_error"]
    assert "torch.profiler, one forward+backward of triton at (1, 14, 15, 2, 16) d=2" in out
    for what in ("triton forward / memory floor", "flex / triton fwd", "dense SDPA / triton fwd+bwd",
                 "torch / triton fwd"):
        assert f"] {what} at (1, 14, 15, 2, 16) d=2: " in out, what
