"""Launching the Triton kernels (:mod:`._kernels`): grids, strides, compile-time flags. Imports triton."""
from __future__ import annotations

import torch

from . import TILES, num_warps, tile_counts
from ._kernels import INTERPRETED, dkdv_kernel, dq_kernel, fwd_kernel, window_probe_kernel, work_probe_kernel

LOG2E = 1.4426950408889634


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def head_dim_padded(head_dim: int) -> int:
    """The head dim the kernels' tiles have (tl.arange needs a power of two, tl.dot >= 16)."""
    return max(16, _next_pow2(head_dim))


def rpb_bins_padded(kernel_size: int) -> int:
    return max(16, _next_pow2(2 * kernel_size - 1))


def dot_flags(dtype: torch.dtype) -> dict:
    # the interpreter multiplies every dot in float32 (see _kernels._mm); on a GPU, float32 inputs use
    # full precision ("ieee", no TF32) and half inputs the tensor cores with float32 accumulation
    return {"DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32", "DOTS_IN_FLOAT32": INTERPRETED}


def _tiles(kind: str) -> dict:
    cfg = TILES[kind]
    return {"TILE_X": cfg["tile_x"], "TILE_Y": cfg["tile_y"], "INNER_X": cfg["inner_x"], "INNER_Y": cfg["inner_y"]}


def _grid(kind, B, X, Y, H, dilation):
    cfg = TILES[kind]
    n_tiles, n_tiles_y = tile_counts(X, Y, dilation, cfg["tile_x"], cfg["tile_y"])
    return (B * H * dilation * dilation * n_tiles,), n_tiles, n_tiles_y


def _rpb_args(rpb, q):
    # without rpb the kernels never read it (HAS_RPB is off): any pointer will do
    return (q, [0, 0, 0]) if rpb is None else (rpb, list(rpb.stride()))


def forward(q, k, v, rpb, kernel_size, dilation, scale):
    """Output ``[B, X, Y, heads, head_dim]`` and log-sum-exp ``[B, heads, X, Y]`` (float32, log2 domain)."""
    B, X, Y, H, D = q.shape
    grid, n_tiles, n_tiles_y = _grid("fwd", B, X, Y, H, dilation)
    out = torch.empty((B, X, Y, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, X, Y), dtype=torch.float32, device=q.device)
    rpb_t, rpb_s = _rpb_args(rpb, q)
    fwd_kernel[grid](
        q, k, v, out, lse, rpb_t,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *rpb_s,
        X, Y, H, dilation, n_tiles, n_tiles_y, float(scale) * LOG2E,
        KERNEL_SIZE=kernel_size, HEAD_DIM=D, HEAD_DIM_PADDED=head_dim_padded(D), HAS_RPB=rpb is not None,
        num_warps=num_warps("fwd", q.dtype, D), num_stages=TILES["fwd"]["num_stages"], **_tiles("fwd"),
        **dot_flags(q.dtype),
    )
    return out, lse


def backward(grad_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale, need_kv=True, need_rpb=True):
    """dq, dk, dv (None unless ``need_kv``), drpb (None without rpb or unless ``need_rpb``)."""
    B, X, Y, H, D = q.shape
    # dO in the layout of O, so that O, dO and dQ share one set of strides in the dQ kernel
    do = grad_out.contiguous()
    dq = torch.empty_like(out)
    delta = torch.empty_like(lse)
    rpb_t, rpb_s = _rpb_args(rpb, q)
    common = dict(KERNEL_SIZE=kernel_size, HEAD_DIM=D, HEAD_DIM_PADDED=head_dim_padded(D), HAS_RPB=rpb is not None,
                  **dot_flags(q.dtype))
    qk_scale = float(scale) * LOG2E

    grid, n_tiles, n_tiles_y = _grid("dq", B, X, Y, H, dilation)
    rpb_grad = rpb is not None and need_rpb
    bins = 2 * kernel_size - 1
    partial = torch.empty((grid[0], bins, bins) if rpb_grad else (1,), dtype=torch.float32, device=q.device)
    dq_kernel[grid](
        q, k, v, out, do, lse, delta, rpb_t, dq, partial,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *rpb_s,
        X, Y, H, dilation, n_tiles, n_tiles_y, qk_scale, float(scale),
        RPB_GRAD=rpb_grad, RPB_BINS_PADDED=rpb_bins_padded(kernel_size),
        BF16_PARTS=3 if q.dtype == torch.float32 else 2,
        num_warps=num_warps("dq", q.dtype, D), num_stages=TILES["dq"]["num_stages"], **_tiles("dq"), **common,
    )
    drpb = None
    if rpb_grad:
        # programs are ordered (batch, head, class, tile): a fixed-order sum per head
        drpb = partial.view(B, H, -1, bins, bins).sum(dim=(0, 2)).to(rpb.dtype)

    dk = dv = None
    if need_kv:
        grid, n_tiles, n_tiles_y = _grid("dkdv", B, X, Y, H, dilation)
        dk = torch.empty((B, X, Y, H, D), dtype=k.dtype, device=k.device)
        dv = torch.empty_like(dk)
        dkdv_kernel[grid](
            q, k, v, do, lse, delta, rpb_t, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *rpb_s,
            X, Y, H, dilation, n_tiles, n_tiles_y, qk_scale, float(scale),
            num_warps=num_warps("dkdv", q.dtype, D), num_stages=TILES["dkdv"]["num_stages"], **_tiles("dkdv"),
            **common,
        )
    return dq, dk, dv, drpb


def work_per_program(X: int, Y: int, kernel_size: int, dilation: int, kind: str, device="cpu") -> torch.Tensor:
    """The inner tiles each program of kernel ``kind`` ('fwd' = dQ too, 'dkdv') loops over, for one
    (batch, head): int32 ``[programs]`` (tests / tools; not on the op's path)."""
    grid, n_tiles, n_tiles_y = _grid(kind, 1, X, Y, 1, dilation)
    work = torch.empty(grid[0], dtype=torch.int32, device=device)
    work_probe_kernel[grid](work, X, Y, 1, dilation, n_tiles, n_tiles_y, KEY_TILES=kind != "dkdv",
                            KERNEL_SIZE=kernel_size, **_tiles(kind))
    return work


def window_rule(length: int, kernel_size: int, device="cpu"):
    """The kernels' window start and query box ``[lo, hi)`` of every position of an axis (tests)."""
    out = [torch.empty(length, dtype=torch.int32, device=device) for _ in range(3)]
    window_probe_kernel[(1,)](*out, length, KERNEL_SIZE=kernel_size, POSITIONS=_next_pow2(max(length, 16)))
    return tuple(out)
