"""Neighbourhood geometry: the one place the window rule is written; every backend uses it.

Per axis of length ``L`` with kernel ``K``, dilation ``d`` and ``NS = K // 2``: query ``i`` attends
to the ``K`` positions of its residue class ``r = i mod d`` that are as centred on ``i`` as
possible, shifted inward at the borders. Within the class (``Lr = ceil((L - r) / d)`` members),
with ``p = i // d``: ``start = clamp(p - NS, 0, Lr - K)`` and the keys are ``(start + t) * d + r``
for ``t = 0 .. K-1``. The RPB index on the axis is ``(K - 1) + (key - i) / d``.

So dilated NA on an X x Y map is plain (dilation-1) NA on each of its d x d residue-class
sub-maps, with the same RPB indices: the compiled CPU kernel and the Triton kernel rely on that.
"""
from __future__ import annotations

import functools
from typing import Tuple

import torch

__all__ = ["window_start", "axis_neighbourhood", "neighborhood_indices"]


def window_start(i, length, kernel_size: int, dilation: int):
    """First neighbourhood member (in units of the residue class) of query index/indices ``i``.

    ``i`` and ``length`` are Python ints or integer tensors (``length`` may be a 1-element tensor
    holding a symbolic size during export).
    """
    r = i % dilation
    p = i // dilation
    class_len = (length - r + dilation - 1) // dilation
    start = p - kernel_size // 2
    if isinstance(start, torch.Tensor):
        return torch.minimum(torch.clamp(start, min=0), class_len - kernel_size)
    return min(max(start, 0), class_len - kernel_size)


def axis_neighbourhood(positions: torch.Tensor, length, kernel_size: int, dilation: int):
    """``keys[i, t]`` (key position) and ``rpb_idx[i, t]`` (RPB index) for the queries ``positions``
    of an axis of ``length`` (an int, or a tensor for sizes known only inside a traced graph)."""
    t = torch.arange(kernel_size, device=positions.device)
    start = window_start(positions, length, kernel_size, dilation)
    keys = (start.unsqueeze(1) + t.unsqueeze(0)) * dilation + (positions % dilation).unsqueeze(1)
    rpb_idx = (kernel_size - 1) + torch.div(keys - positions.unsqueeze(1), dilation, rounding_mode="floor")
    return keys, rpb_idx


@functools.lru_cache(maxsize=256)
def _neighborhood_indices_cached(length: int, kernel_size: int, dilation: int, device: str):
    return axis_neighbourhood(torch.arange(length, device=device), length, kernel_size, dilation)


def neighborhood_indices(length: int, kernel_size: int, dilation: int = 1,
                         device="cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-axis neighbourhood of every query of a concrete length, cached: ``keys`` and
    ``rpb_idx``, both ``[L, K]`` int64."""
    return _neighborhood_indices_cached(int(length), int(kernel_size), int(dilation), str(torch.device(device)))
