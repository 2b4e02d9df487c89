"""Exhaustive small-shape sweep of the compiled CPU kernel (issue 14).

The heap corruption of issue 14 lived in a buffer sized for long axes (a key row is held by at most
K + K/2 query rows) that short axes overflow (K < X < 2K at dilation 1: every query row holds the
middle key rows). The earlier grids never had such a shape with a backward pass. This sweep runs
every X, and separately every Y, from K*d to (2K+2)*d for K = 3..13 and d = 1..3, with heads and
head dims cycling over several values, forward and backward, on every instruction set this CPU
has (float32), the float64 path, bfloat16 (the best instruction set, which on a CPU with
AVX512_BF16 multiplies in bfloat16, and the conversion path of the others) and float16, each
against an independent float64 reference (tests/reference.py, gathered neighbours and plain
autograd). The inputs are bfloat16 numbers (in float64), so that the bfloat16 runs get exactly the
reference's inputs and their tolerance measures the kernel, not the rounding of its inputs.

Tolerances (max |error| / max |reference|, outputs; gradients twice that):
- float32 2e-5, float64 1e-10;
- bfloat16 1.6e-2: the outputs are rounded to bfloat16 (2^-8 relative each), and the products take
  the softmax weights and dS rounded to bfloat16 pairs (vdpbf16ps); softmax, dS, the sums and the
  rpb gradient are float32 / float64;
- float16 2e-3: float32 compute on converted copies, outputs rounded to float16 (2^-11 relative).

`make asan` (tools/asan_check.sh) runs this file against a build of the kernel with
AddressSanitizer, so an out-of-bounds access fails loudly instead of corrupting the heap.
"""
import os
import sys

import pytest
import torch

from dinat_backbone import ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import forward_and_grads, instruction_sets, rel_err  # noqa: E402
from reference import na2d_reference_gathered  # noqa: E402

KERNEL_SIZES = (3, 5, 7, 9, 11, 13)
DILATIONS = (1, 2, 3)
# (heads, head_dim): odd head_dims leave a remainder after the vector-wide channel loops, and
# heads change the lane layout (lane = y * heads + head)
HEAD_SHAPES = ((1, 4), (2, 8), (3, 5), (4, 4), (2, 3), (1, 17))
# max |error| / max |reference|, as in test_ops.py
TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def sweep_shapes(K, d):
    """(B, X, Y, H, D, use_rpb): every X with a short Y, then every Y with a short X."""
    lo, hi = K * d, (2 * K + 2) * d
    shapes = []
    for n, X in enumerate(range(lo, hi + 1)):
        H, D = HEAD_SHAPES[n % len(HEAD_SHAPES)]
        shapes.append((2 if n % 4 == 0 else 1, X, lo + n % 3, H, D, n % 5 != 4))
    for n, Y in enumerate(range(lo, hi + 1)):
        H, D = HEAD_SHAPES[(n + 3) % len(HEAD_SHAPES)]
        shapes.append((2 if n % 4 == 2 else 1, lo + 1 + n % 2, Y, H, D, n % 5 != 1))
    return shapes


def bf16_numbers(*shape, generator):
    """Normal samples that are bfloat16 numbers, in float64."""
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(torch.bfloat16).double()


@pytest.mark.parametrize("d", DILATIONS)
@pytest.mark.parametrize("K", KERNEL_SIZES)
def test_kernel_sweep_matches_reference(K, d):
    from dinat_backbone import _C

    previous = _C.isa()
    isas = instruction_sets()
    gen = torch.Generator().manual_seed(K * 10 + d)
    failures = []
    try:
        for n, (B, X, Y, H, D, use_rpb) in enumerate(sweep_shapes(K, d)):
            q, k, v, grad_out = (bf16_numbers(B, X, Y, H, D, generator=gen) for _ in range(4))
            rpb = bf16_numbers(H, 2 * K - 1, 2 * K - 1, generator=gen) if use_rpb else None
            expected = forward_and_grads(lambda q, k, v, r: na2d_reference_gathered(q, k, v, K, d, r),
                                         (q, k, v, rpb), grad_out)
            # the best instruction set on every shape, the others (and float64, which runs the
            # generic code) on every other shape in turn: the reference dominates the cost
            best, others = isas[-1], isas[:-1] + ["float64"]
            extra = others[n % len(others)] if n % 2 == 0 else None
            runs = [(best, torch.float32)] + ([(best, torch.float64)] if extra == "float64" else
                                             [(extra, torch.float32)] if extra else [])
            # bfloat16 on every shape (the best ISA: bfloat16 products where the CPU has them), the
            # conversion path of the next ISA on every other shape, float16 on every third
            runs.append((best, torch.bfloat16))
            if n % 2 == 1 and len(isas) > 1:
                runs.append((isas[-2], torch.bfloat16))
            if n % 3 == 0:
                runs.append((best, torch.float16))
            # dilated maps: both backward pass-2 paths (key rows / per-key gather), alternating by shape
            _C.set_key_pass(("rows" if n % 2 else "gather") if d > 1 else "auto")
            for isa, dtype in runs:
                _C.set_isa(isa)
                cast = [None if t is None else t.to(dtype) for t in (q, k, v, rpb)]
                got = forward_and_grads(lambda q, k, v, r: ops.na2d(q, k, v, K, d, r, backend="cpu"), cast, grad_out)
                for name, g, e in zip(("out", "dq", "dk", "dv", "drpb"), got, expected):
                    tol = TOL[dtype] * (1 if name == "out" else 2)
                    err = rel_err(g, e)
                    if not err < tol:
                        failures.append(f"{isa} {dtype} B={B} X={X} Y={Y} H={H} D={D} rpb={use_rpb} "
                                        f"pass2={'rows' if n % 2 else 'gather'}: {name} {err:.2e}")
    finally:
        _C.set_isa(previous)
        _C.set_key_pass("auto")
    assert not failures, f"K={K} d={d}: {len(failures)} mismatches, first: " + "; ".join(failures[:5])


# head_dim 32 as in DiNAT (full channel-pair loops, 16-lane blocks), dilations 1, 2, 4; 16 heads on
# rows shorter than 2K (a key held by more than K queries: the bfloat16 pass-2 pair buffer once
# overflowed there, found by ASan), 8 heads at d = 3 (the gather takes 16 / heads column classes at
# a time: 2, 2, then 1), 2 heads at d = 20 (column chunks of 8, then 12 classes: steps 16 and 24
# lanes, K 3), 3 heads at d = 4 (one chunk, a 12-lane step); every dilated shape through both pass-2
# paths
MODEL_SHAPES = ((1, 24, 28, 2, 32, 7, 1), (1, 28, 30, 4, 32, 7, 2), (2, 16, 21, 3, 32, 5, 3), (1, 29, 30, 2, 32, 7, 4),
                (1, 9, 13, 16, 32, 7, 1), (1, 22, 23, 8, 32, 7, 3), (1, 60, 75, 2, 32, 3, 20),
                (2, 30, 33, 3, 32, 7, 4))


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_kernel_half_dtypes_at_model_head_dim(dtype):
    """bfloat16 / float16 in, outputs and gradients in the input dtype, on every instruction set."""
    from dinat_backbone import _C

    previous = _C.isa()
    gen = torch.Generator().manual_seed(23)
    failures = []
    try:
        for B, X, Y, H, D, K, d in MODEL_SHAPES:
            q, k, v, grad_out = (bf16_numbers(B, X, Y, H, D, generator=gen) for _ in range(4))
            rpb = bf16_numbers(H, 2 * K - 1, 2 * K - 1, generator=gen)
            expected = forward_and_grads(lambda q, k, v, r: na2d_reference_gathered(q, k, v, K, d, r),
                                         (q, k, v, rpb), grad_out)
            for isa in instruction_sets():
                for pass2 in ("auto", "rows", "gather") if d > 1 else ("auto",):
                    _C.set_isa(isa)
                    _C.set_key_pass(pass2)
                    cast = [t.to(dtype) for t in (q, k, v, rpb)]
                    got = forward_and_grads(lambda q, k, v, r: ops.na2d(q, k, v, K, d, r, backend="cpu"), cast,
                                            grad_out)
                    for name, g, e in zip(("out", "dq", "dk", "dv", "drpb"), got, expected):
                        assert g.dtype == dtype, (isa, name, g.dtype)
                        err = rel_err(g, e)
                        if not err < TOL[dtype] * (1 if name == "out" else 2):
                            failures.append(f"{isa} pass2={pass2} B={B} X={X} Y={Y} H={H} K={K} d={d}: "
                                            f"{name} {err:.2e}")
    finally:
        _C.set_isa(previous)
        _C.set_key_pass("auto")
    assert not failures, f"{len(failures)} mismatches: " + "; ".join(failures[:5])


def test_kernel_softmax_underflow_and_nan_on_every_instruction_set():
    """Peaked softmax (logit gaps of hundreds: most weights underflow to exactly 0, including the
    shorter exp of the bfloat16 products) matches the float64 reference, and a NaN in q or k makes
    exactly the outputs NaN whose logits it enters (the reference's), nothing else."""
    from dinat_backbone import _C

    previous = _C.isa()
    gen = torch.Generator().manual_seed(5)
    B, X, Y, H, D, K, d = 1, 18, 20, 2, 32, 7, 2
    q, k, v = (bf16_numbers(B, X, Y, H, D, generator=gen) for _ in range(3))
    rpb = bf16_numbers(H, 2 * K - 1, 2 * K - 1, generator=gen)
    scale = 40.0  # |q.k| ~ sqrt(32): logit gaps far beyond exp's float range
    expected = na2d_reference_gathered(q, k, v, K, d, rpb, scale=scale)
    q_nan, k_nan = q.clone(), k.clone()
    q_nan[0, 3, 4, 1, 7] = float("nan")
    k_nan[0, 9, 10, 0, 0] = float("nan")
    expected_nan = na2d_reference_gathered(q_nan, k_nan, v, K, d, rpb, scale=scale).isnan()
    assert 0 < expected_nan.sum() < expected_nan.numel()
    try:
        for isa in instruction_sets():
            _C.set_isa(isa)
            for dtype in (torch.float32, torch.bfloat16):
                cast = lambda *ts: [t.to(dtype) for t in ts]  # noqa: E731
                out = ops.na2d(*cast(q, k, v), K, d, cast(rpb)[0], scale=scale, backend="cpu")
                assert rel_err(out, expected) < TOL[dtype], (isa, dtype, rel_err(out, expected))
                out_nan = ops.na2d(*cast(q_nan, k_nan, v), K, d, cast(rpb)[0], scale=scale, backend="cpu")
                assert torch.equal(out_nan.isnan(), expected_nan), (isa, dtype)
    finally:
        _C.set_isa(previous)
