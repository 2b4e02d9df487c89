"""``NeighborhoodAttention2D``: the thin module over :func:`dinat_backbone.ops.na2d` (qkv Linear,
rpb Parameter, proj Linear; parameter names match the original DiNAT / NAT checkpoints)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from ..fused_linear import linear
from .dispatch import na2d, na2d_padded
from .inputs import require_int
from .padding import zero_token_qkv

__all__ = ["NeighborhoodAttention2D", "split_qkv"]


class _SplitQKV(torch.autograd.Function):
    """``qkv.reshape(B, X, Y, 3, heads, head_dim).unbind(3)`` whose backward stacks dq, dk, dv only
    when it must: the compiled kernel's backward writes them into one ``[B, X, Y, 3, heads,
    head_dim]`` buffer, which already is the gradient of ``qkv`` (unbind's own backward would copy
    it into a fresh one: a tenth of the op's backward at DiNAT-T's stage-1 map)."""

    @staticmethod
    def forward(ctx, qkv, heads, head_dim):
        B, X, Y, C3 = qkv.shape
        ctx.shape = (B, X, Y, C3)
        return qkv.view(B, X, Y, 3, heads, head_dim).unbind(3)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dq, dk, dv):
        grads = (dq, dk, dv)
        if any(g is None for g in grads):
            like = next(g for g in grads if g is not None)
            grads = tuple(torch.zeros_like(like) if g is None else g for g in grads)
        base = grads[0]._base
        B, X, Y, heads, head_dim = grads[0].shape
        if (base is not None and all(g._base is base for g in grads)
                and tuple(base.shape) == (B, X, Y, 3, heads, head_dim) and base.is_contiguous()
                and all(g.data_ptr() == base.select(3, i).data_ptr() and g.stride() == base.select(3, i).stride()
                        for i, g in enumerate(grads))):
            return base.view(ctx.shape), None, None  # the three slices are all of the buffer, in order
        return torch.stack(grads, dim=3).view(ctx.shape), None, None


def split_qkv(qkv: torch.Tensor, heads: int, head_dim: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, X, Y, 3 * heads * head_dim]`` -> q, k, v, each ``[B, X, Y, heads, head_dim]`` (views).
    With autograd, in eager mode, through :class:`_SplitQKV` (no copy of a packed gradient)."""
    B, X, Y, _ = qkv.shape
    if (qkv.requires_grad and torch.is_grad_enabled() and qkv.is_contiguous()
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing()):
        return _SplitQKV.apply(qkv, heads, head_dim)
    return qkv.reshape(B, X, Y, 3, heads, head_dim).unbind(3)


class NeighborhoodAttention2D(nn.Module):
    """Multi-head (dilated) neighbourhood attention on channels-last ``[B, X, Y, C]`` maps.

    ``forward(x)`` runs qkv projection, attention and output projection. Every attention of a
    DiNAT model goes through this module's ``forward`` (so forward hooks see every call): the
    block's memory-lean training path passes the qkv projection it computed fused with the
    LayerNorm as ``qkv=`` instead of ``x``, and small maps are padded here (``pad_small_maps``).
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, dilation: int = 1, bias: bool = True,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, backend: Optional[str] = None):
        super().__init__()
        owner = "NeighborhoodAttention2D"
        dim, num_heads = require_int(owner, "dim", dim), require_int(owner, "num_heads", num_heads)
        kernel_size = require_int(owner, "kernel_size", kernel_size, 3)
        dilation = require_int(owner, "dilation", dilation)
        if dim % num_heads != 0:
            raise ValueError(f"NeighborhoodAttention2D: dim {dim} is not divisible by num_heads {num_heads}")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"NeighborhoodAttention2D: kernel_size must be an odd integer >= 3, got {kernel_size}")
        if dilation < 1:
            raise ValueError(f"NeighborhoodAttention2D: dilation must be >= 1, got {dilation}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
            nn.init.trunc_normal_(self.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def split_heads(self, qkv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, X, Y, 3C]`` -> q, k, v, each ``[B, X, Y, heads, head_dim]`` (views)."""
        return split_qkv(qkv, self.num_heads, self.head_dim)

    def pad_tokens(self, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of a zero input token, each ``[heads, head_dim]``: what a map zero-padded before
        the qkv projection holds in its padding (:func:`dinat_backbone.ops.padding.zero_token_qkv`)."""
        return zero_token_qkv(self.qkv.bias, self.num_heads, self.head_dim, like)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_small_maps: bool = False) -> torch.Tensor:
        """The attention itself, ``[B, X, Y, heads, head_dim]`` in and out."""
        drop = self.attn_drop if self.training else 0.0
        if pad_small_maps:
            return na2d_padded(q, k, v, self.kernel_size, self.dilation, self.rpb, self.scale, self.backend, drop,
                               self.pad_tokens(q))
        return na2d(q, k, v, self.kernel_size, self.dilation, self.rpb, self.scale, self.backend, drop)

    def project(self, out: torch.Tensor) -> torch.Tensor:
        """Heads merged, output projection and dropout: ``[B, X, Y, heads, head_dim]`` -> ``[B, X, Y, C]``."""
        B, X, Y = out.shape[:3]
        return self.proj_drop(linear(out.reshape(B, X, Y, self.dim), self.proj))

    def forward(self, x: Optional[torch.Tensor] = None, *, qkv: Optional[torch.Tensor] = None,
                pad_small_maps: bool = False) -> torch.Tensor:
        """``x``: ``[B, X, Y, C]``; or ``qkv``: its qkv projection ``[B, X, Y, 3C]`` computed by the
        caller. ``pad_small_maps``: a map smaller than ``kernel_size * dilation`` on an axis is
        treated as zero-padded (before the qkv projection) on the right / bottom, and the result
        cropped back; otherwise such a map is an error."""
        if qkv is None:
            if x is None or x.dim() != 4 or x.shape[-1] != self.dim:
                got = None if x is None else tuple(x.shape)
                raise ValueError(
                    f"NeighborhoodAttention2D: expected a channels-last map [B, X, Y, {self.dim}], got {got}")
            qkv = linear(x, self.qkv)
        elif qkv.dim() != 4 or qkv.shape[-1] != 3 * self.dim:
            raise ValueError(f"NeighborhoodAttention2D: qkv must be [B, X, Y, {3 * self.dim}], got {tuple(qkv.shape)}")
        return self.project(self.attend(*self.split_heads(qkv), pad_small_maps=pad_small_maps))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, rpb={self.rpb is not None}")
