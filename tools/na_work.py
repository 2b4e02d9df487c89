"""Work accounting of the triton backend's kernels: how many score entries (query-key pairs,
padding included) they compute against the ``X * Y * K^2`` the op needs, and the same figure for a
flex_attention block mask. Used by ``tools/benchmark_na.py`` and ``tests/test_triton.py``; not on
the op's path (importable with torch alone: it reads the tile table, not the kernels).

It mirrors the kernels' loops in Python: the window rule is
:func:`dinat_backbone.ops.geometry.window_start` (which the kernels' ``_window_start`` mirrors), the
query box its inverse as in ``_kernels._query_box``, the tile counts those of the grid (class 0's).
``tests/test_triton.py::test_work_accounting_matches_the_kernels`` holds it to the counts the
kernels' own device functions give (``_launch.work_per_program``).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dinat_backbone.ops import neighborhood_indices, window_start  # noqa: E402
from dinat_backbone.ops.triton import TILES  # noqa: E402

__all__ = ["score_work", "score_work_ratio", "flex_block_mask_work_ratio"]


def _class_lengths(length: int, dilation: int):
    return [-(-(length - r) // dilation) for r in range(dilation)]


def _query_box(x0: int, last: int, length: int, kernel_size: int):
    """Queries whose windows hold one of the keys ``x0 .. last`` (the inverse of the window rule)."""
    lo = 0 if x0 <= kernel_size - 1 else x0 - kernel_size // 2
    hi = length if last >= length - kernel_size else last + kernel_size // 2 + 1
    return lo, hi


def _axis_work(length, kernel_size, dilation, outer, inner, kind):
    """Per residue class of one axis: the inner tiles each outer tile loops over, summed; the tile
    count comes from class 0 as in the grid."""
    lengths = _class_lengths(length, dilation)
    n_outer = -(-lengths[0] // outer)
    total = []
    for L in lengths:
        s = 0
        for t in range(n_outer):
            x0 = t * outer
            if x0 >= L:
                continue
            last = min(x0 + outer, L) - 1
            if kind == "keys":  # the key box of a query tile (positions in class units: dilation 1)
                lo, hi = window_start(x0, L, kernel_size, 1), window_start(last, L, kernel_size, 1) + kernel_size
            else:
                lo, hi = _query_box(x0, last, L, kernel_size)
            s += -(-(hi - lo) // inner)
        total.append(s)
    return total


def score_work(X: int, Y: int, kernel_size: int, dilation: int = 1, kernel: str = "fwd") -> int:
    """Score entries one (batch, head) of the kernel computes: ``kernel`` 'fwd' (the forward; the
    dQ kernel is the same), 'dkdv' (the dK/dV kernel)."""
    cfg = TILES[kernel]
    kind = "queries" if kernel == "dkdv" else "keys"
    wx = _axis_work(X, kernel_size, dilation, cfg["tile_x"], cfg["inner_x"], kind)
    wy = _axis_work(Y, kernel_size, dilation, cfg["tile_y"], cfg["inner_y"], kind)
    per_pair = cfg["tile_x"] * cfg["tile_y"] * cfg["inner_x"] * cfg["inner_y"]
    # a class (rx, ry) runs the outer tiles of row class rx times those of column class ry
    return per_pair * sum(wx) * sum(wy)


def score_work_ratio(X: int, Y: int, kernel_size: int, dilation: int = 1, kernel: str = "fwd") -> float:
    """:func:`score_work` divided by the ``X * Y * K^2`` score entries the op needs."""
    return score_work(X, Y, kernel_size, dilation, kernel) / (X * Y * kernel_size ** 2)


def flex_block_mask_work_ratio(X: int, Y: int, kernel_size: int, dilation: int = 1, block: int = 128) -> float:
    """The same ratio for a flex_attention block mask: tokens in row-major order, ``block x block``
    tiles, a tile computed in full when any of its pairs is a neighbour pair. Counted from the
    neighbourhood tables, without an N x N mask."""
    keys_x, _ = neighborhood_indices(X, kernel_size, dilation)  # [X, K]
    keys_y, _ = neighborhood_indices(Y, kernel_size, dilation)  # [Y, K]
    n_blocks = -(-(X * Y) // block)
    q_block = (torch.arange(X)[:, None] * Y + torch.arange(Y)[None, :]) // block  # [X, Y]
    used = torch.zeros(n_blocks * n_blocks, dtype=torch.bool)
    for a in range(kernel_size):  # one key row offset at a time: [X, Y, K] key tokens
        key_tok = keys_x[:, a][:, None, None] * Y + keys_y[None, :, :]
        used[(q_block[:, :, None] * n_blocks + key_tok // block).reshape(-1)] = True
    return int(used.sum()) * block * block / (X * Y * kernel_size ** 2)
