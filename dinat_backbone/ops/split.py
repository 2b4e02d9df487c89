"""The split (two-op) form of 2-D neighbourhood attention, with NATTEN <= 0.17.4's signatures and layout.

``natten2dqkrpb(query, key, rpb, kernel_size, dilation)`` gives the attention logits of every query
against its neighbourhood plus the relative positional bias, and ``natten2dav(attn, value,
kernel_size, dilation)`` applies (softmaxed) weights to the values. These are the functions
NATTEN 0.17.5 removed and that HF transformers' ``modeling_dinat`` still imports; with them the
attention weights exist as a tensor, so a caller can return them (``output_attentions=True``) or
apply dropout to them. Without that need, the fused :func:`~dinat_backbone.ops.na2d` is faster and
leaner.

Layout (heads first, as NATTEN <= 0.17): ``query`` / ``key`` / ``value`` ``[batch, heads, X, Y,
head_dim]``; ``attn`` ``[batch, heads, X, Y, kernel_size**2]``, neighbour ``a * kernel_size + t``
being kernel row ``a``, column ``t``; ``rpb`` ``[heads, 2*kernel_size-1, 2*kernel_size-1]`` or
None. Neither op scales: callers scale the query first (as transformers does). The neighbourhood is
:mod:`.geometry`'s; each of X, Y must be at least ``kernel_size * dilation``.

Autograd: three autograd functions close over each other (the gradient of each is made of the
others), so backward is itself differentiable (double backward). Every device, float16 / bfloat16
computed in float32 (as the ``torch`` backend); autocast is off inside.
"""
from __future__ import annotations

import torch

from .geometry import neighborhood_indices
from .inputs import compute_dtype
from .reference import _av, _av_transposed, _qk, _rpb_bias

__all__ = ["natten2dqkrpb", "natten2dav"]


def _index(x: torch.Tensor, kernel_size: int, dilation: int):
    """Per-axis neighbours and RPB indices of a heads-last ``[B, X, Y, H, D]`` map."""
    keys_y, rpb_y = neighborhood_indices(x.shape[1], kernel_size, dilation, x.device)
    keys_x, rpb_x = neighborhood_indices(x.shape[2], kernel_size, dilation, x.device)
    return keys_y, keys_x, rpb_y, rpb_x


# Heads-last internally ([B, X, Y, H, D] maps, [B, X, Y, H, K, K] weights): the reference backend's helpers.
class _QK(torch.autograd.Function):
    """``out[q, n] = query[q] . key[neighbour n of q]``."""

    @staticmethod
    def forward(ctx, query, key, kernel_size, dilation):
        ctx.save_for_backward(query, key)
        ctx.geometry = (kernel_size, dilation)
        keys_y, keys_x, _, _ = _index(query, kernel_size, dilation)
        return _qk(query, key, keys_y, keys_x)

    @staticmethod
    def backward(ctx, grad):
        query, key = ctx.saved_tensors
        dq = _AV.apply(grad, key, *ctx.geometry) if ctx.needs_input_grad[0] else None
        dk = _AVt.apply(grad, query, *ctx.geometry) if ctx.needs_input_grad[1] else None
        return dq, dk, None, None


class _AV(torch.autograd.Function):
    """``out[q] = sum_n attn[q, n] * value[neighbour n of q]``."""

    @staticmethod
    def forward(ctx, attn, value, kernel_size, dilation):
        ctx.save_for_backward(attn, value)
        ctx.geometry = (kernel_size, dilation)
        keys_y, keys_x, _, _ = _index(value, kernel_size, dilation)
        return _av(attn, value, keys_y, keys_x)

    @staticmethod
    def backward(ctx, grad):
        attn, value = ctx.saved_tensors
        da = _QK.apply(grad, value, *ctx.geometry) if ctx.needs_input_grad[0] else None
        dv = _AVt.apply(attn, grad, *ctx.geometry) if ctx.needs_input_grad[1] else None
        return da, dv, None, None


class _AVt(torch.autograd.Function):
    """The adjoint of :class:`_AV` in the value: ``out[k] = sum of attn[q, n] * x[q]`` over the
    (query, neighbour) pairs whose neighbour is ``k``."""

    @staticmethod
    def forward(ctx, attn, x, kernel_size, dilation):
        ctx.save_for_backward(attn, x)
        ctx.geometry = (kernel_size, dilation)
        keys_y, keys_x, _, _ = _index(x, kernel_size, dilation)
        return _av_transposed(attn, x, keys_y, keys_x)

    @staticmethod
    def backward(ctx, grad):
        attn, x = ctx.saved_tensors
        da = _QK.apply(x, grad, *ctx.geometry) if ctx.needs_input_grad[0] else None
        dx = _AV.apply(attn, grad, *ctx.geometry) if ctx.needs_input_grad[1] else None
        return da, dx, None, None


def _check_geometry(op: str, kernel_size, dilation, X: int, Y: int):
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"{op}: kernel_size must be an odd integer >= 3, got {kernel_size!r}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"{op}: dilation must be an integer >= 1, got {dilation!r}")
    window = kernel_size * dilation
    if X < window or Y < window:
        raise ValueError(
            f"{op}: the map is {X}x{Y}, smaller than kernel_size * dilation = {kernel_size} * {dilation} = {window} "
            f"on an axis; pad it to at least {window}x{window} first (transformers' DinatLayer.maybe_pad does)")


def _check_map(op: str, name: str, t, like=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 5 or not t.is_floating_point():
        raise ValueError(
            f"{op}: {name} must be a floating-point [batch, heads, X, Y, head_dim] tensor (NATTEN <= 0.17's "
            f"heads-first layout), got {t.dtype} of shape {tuple(t.shape)}; from a heads-last [batch, X, Y, heads, "
            "head_dim] tensor use .permute(0, 3, 1, 2, 4)")
    if like is not None and (t.shape[:4] != like.shape[:4] or t.device != like.device):
        raise ValueError(
            f"{op}: {name} {tuple(t.shape)} on {t.device} does not match the [batch, heads, X, Y] = "
            f"{list(like.shape[:4])} on {like.device} of the other input")


def natten2dqkrpb(query: torch.Tensor, key: torch.Tensor, rpb, kernel_size: int, dilation: int = 1) -> torch.Tensor:
    """Attention logits ``[batch, heads, X, Y, kernel_size**2]``: ``query . key`` over each query's
    (dilated) neighbourhood plus ``rpb`` (``[heads, 2K-1, 2K-1]`` or None), NATTEN <= 0.17.4's
    ``natten.functional.natten2dqkrpb``. ``query`` is not scaled here."""
    op = "natten2dqkrpb"
    _check_map(op, "query", query)
    _check_map(op, "key", key, like=query)
    if key.shape != query.shape:
        raise ValueError(f"{op}: query {tuple(query.shape)} and key {tuple(key.shape)} must have the same shape")
    _, heads, X, Y, _ = query.shape
    _check_geometry(op, kernel_size, dilation, X, Y)
    if rpb is not None:
        want = (heads, 2 * kernel_size - 1, 2 * kernel_size - 1)
        if not isinstance(rpb, torch.Tensor) or tuple(rpb.shape) != want:
            got = tuple(rpb.shape) if isinstance(rpb, torch.Tensor) else type(rpb).__name__
            raise ValueError(f"{op}: rpb must have shape [heads, 2*kernel_size-1, 2*kernel_size-1] = {list(want)}, "
                             f"got {got}")
        if rpb.device != query.device:
            raise ValueError(f"{op}: rpb is on {rpb.device} but query is on {query.device}; move it with .to()")
    out_dtype = torch.promote_types(query.dtype, key.dtype)
    cdt = compute_dtype(out_dtype)
    with torch.autocast(query.device.type, enabled=False):
        q = query.to(cdt).permute(0, 2, 3, 1, 4)
        k = key.to(cdt).permute(0, 2, 3, 1, 4)
        logits = _QK.apply(q, k, kernel_size, dilation)  # [B, X, Y, H, K, K]
        if rpb is not None:
            _, _, rpb_y, rpb_x = _index(q, kernel_size, dilation)
            logits = logits + _rpb_bias(rpb.to(cdt), rpb_y, rpb_x, kernel_size)
        B = query.shape[0]
        return logits.reshape(B, X, Y, heads, kernel_size * kernel_size).permute(0, 3, 1, 2, 4).to(out_dtype)


def natten2dav(attn: torch.Tensor, value: torch.Tensor, kernel_size: int, dilation: int = 1) -> torch.Tensor:
    """``[batch, heads, X, Y, head_dim]``: the weights ``attn`` ``[batch, heads, X, Y,
    kernel_size**2]`` applied to ``value`` over each query's (dilated) neighbourhood, NATTEN <= 0.17.4's
    ``natten.functional.natten2dav``."""
    op = "natten2dav"
    _check_map(op, "value", value)
    _check_map(op, "attn", attn, like=value)
    _, heads, X, Y, _ = value.shape
    _check_geometry(op, kernel_size, dilation, X, Y)
    if attn.shape[-1] != kernel_size * kernel_size:
        raise ValueError(f"{op}: attn's last dim must be kernel_size**2 = {kernel_size * kernel_size}, got shape "
                         f"{tuple(attn.shape)}; is kernel_size the one natten2dqkrpb was called with?")
    out_dtype = torch.promote_types(attn.dtype, value.dtype)
    cdt = compute_dtype(out_dtype)
    with torch.autocast(value.device.type, enabled=False):
        a = attn.to(cdt).permute(0, 2, 3, 1, 4).unflatten(-1, (kernel_size, kernel_size))
        v = value.to(cdt).permute(0, 2, 3, 1, 4)
        return _AV.apply(a, v, kernel_size, dilation).permute(0, 3, 1, 2, 4).to(out_dtype)
