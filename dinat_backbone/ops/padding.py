"""Small-map padding, written once: ``DiNAT(small_input='pad')`` zero-pads a map smaller than
``kernel_size * dilation`` on the right / bottom *before* the qkv projection (the checkpoints were
trained that way) and crops the result back.

A zero input token projects to the qkv bias, so the padding is done on q / k / v with those tokens
(:func:`zero_token_qkv`): the dispatcher pads the map for the backends that need a full-size map
(:func:`pad_map`), and the export backend folds the same padding into one branch-free graph
(:func:`extend_with_token`: one extra row and column holding the token, out-of-map keys pointing at it).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["padded_size", "zero_token_qkv", "pad_map", "extend_with_token"]


def padded_size(rows: int, cols: int, kernel_size: int, dilation: int) -> Tuple[int, int]:
    """The map size a padded call runs on: each axis at least ``kernel_size * dilation``."""
    window = kernel_size * dilation
    return max(rows, window), max(cols, window)


def zero_token_qkv(qkv_bias: Optional[torch.Tensor], heads: int, head_dim: int,
                   like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a zero input token, each ``[heads, head_dim]``: the qkv projection's bias, or zeros."""
    if qkv_bias is not None:
        return qkv_bias.reshape(3, heads, head_dim).unbind(0)
    zero = like.new_zeros(heads, head_dim)
    return zero, zero, zero


def pad_map(t: torch.Tensor, token: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``t`` ``[B, X, Y, H, D]`` extended on the right / bottom to ``[B, rows, cols, H, D]`` with
    copies of ``token`` ``[H, D]``."""
    B, X, Y, H, D = t.shape
    token = token.to(t.dtype).reshape(1, 1, 1, H, D)
    if rows > X:
        t = torch.cat([t, token.expand(B, rows - X, Y, H, D)], dim=1)
    if cols > Y:
        t = torch.cat([t, token.expand(B, rows, cols - Y, H, D)], dim=2)
    return t


def extend_with_token(t: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """``t`` ``[B, X, Y, H, D]`` with one more row and column of ``token``: ``[B, X+1, Y+1, H, D]``.
    Branch-free (sizes may be symbolic): every key of the padding is the same token, so one copy of
    it, addressed by clamping out-of-map key indices to ``X`` / ``Y``, is the padded map's keys."""
    B, X, Y, H, D = t.shape
    token = token.to(t.dtype).reshape(1, 1, 1, H, D)
    t = torch.cat([t, token.expand(B, 1, Y, H, D)], dim=1)
    return torch.cat([t, token.expand(B, X + 1, 1, H, D)], dim=2)
