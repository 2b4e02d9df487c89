"""Neighborhood attention (NA / dilated NA) with relative positional bias, for 2-D maps.

The functional op is :func:`na2d`, with NATTEN >= 0.20's heads-last layout
``[batch, X, Y, heads, head_dim]`` and NATTEN <= 0.17's semantics (relative positional bias, RPB),
which every published DiNAT / NAT checkpoint was trained with. :class:`NeighborhoodAttention2D`
is the thin module on top (qkv Linear, rpb Parameter, proj Linear).

Semantics, per axis of length ``L`` with kernel ``K``, dilation ``d`` and ``NS = K // 2``: query
``i`` attends to the ``K`` positions of its residue class ``r = i mod d`` that are as centred on
``i`` as possible, shifted inward at the borders. Within the class (``Lr = ceil((L - r) / d)``
members), with ``p = i // d``, ``start = clamp(p - NS, 0, Lr - K)`` and the keys are
``(start + t) * d + r`` for ``t = 0 .. K-1``. The RPB index on the axis is
``(K - 1) + (key - i) / d``. A 2-D neighbourhood is the product of the two 1-D ones and
``logits = scale * q.k + rpb[head, idx_y, idx_x]``, softmax over the ``K * K`` neighbours.

Backends (``backend=`` argument, or the ``DINAT_NA_BACKEND`` environment variable):

``"cpu"``
    compiled C++ kernel (``dinat_backbone._C``), forward and backward; the default on CPU.
``"torch"``
    pure PyTorch with its own autograd; runs on any device; the reference and the fallback.
    Memory is O(N * K^2): it never forms an N x N matrix and keeps no gathered copies of K / V
    for backward (it saves q, k, v and the attention weights).
``"flex"``
    ``torch.nn.attention.flex_attention`` with a block mask of the neighbourhood and a
    ``score_mod`` adding the RPB; the default on CUDA when an rpb is given.
``"natten"``
    ``natten.na2d`` (fused, NATTEN >= 0.20); CUDA only and only without rpb.

The backend that ran last is in :data:`last_backend` and is logged at DEBUG level.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "na2d",
    "NeighborhoodAttention2D",
    "neighborhood_indices",
    "available_backends",
    "cpu_kernel_available",
    "BACKENDS",
]

logger = logging.getLogger(__name__)

BACKENDS = ("cpu", "torch", "flex", "natten", "triton")
BACKEND_ENV = "DINAT_NA_BACKEND"

#: name of the backend used by the most recent :func:`na2d` call (for debugging / tests)
last_backend: Optional[str] = None


# ----------------------------------------------------------------------------------------------
# Neighbourhood geometry (shared by every backend)
# ----------------------------------------------------------------------------------------------
def window_start(i, length: int, kernel_size: int, dilation: int):
    """First neighbourhood member (in units of the residue class) for query index/indices ``i``.

    Works on Python ints and on integer tensors (also inside flex_attention's vmapped mask_mod).
    """
    r = i % dilation
    p = i // dilation
    class_len = (length - r + dilation - 1) // dilation
    start = p - kernel_size // 2
    if isinstance(start, torch.Tensor):
        return torch.minimum(torch.clamp(start, min=0), class_len - kernel_size)
    return min(max(start, 0), class_len - kernel_size)


@functools.lru_cache(maxsize=256)
def _axis_indices_cached(length: int, kernel_size: int, dilation: int, device: str):
    i = torch.arange(length, device=device)
    t = torch.arange(kernel_size, device=device)
    start = window_start(i, length, kernel_size, dilation)
    keys = (start[:, None] + t[None, :]) * dilation + (i % dilation)[:, None]
    rpb_idx = (kernel_size - 1) + torch.div(keys - i[:, None], dilation, rounding_mode="floor")
    return keys, rpb_idx


def neighborhood_indices(length: int, kernel_size: int, dilation: int = 1, device="cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-axis neighbourhood: ``keys[i, t]`` (key position) and ``rpb_idx[i, t]`` (RPB index), both ``[L, K]``."""
    return _axis_indices_cached(int(length), int(kernel_size), int(dilation), str(torch.device(device)))


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------
def _check_inputs(query, key, value, kernel_size, dilation, rpb):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"na2d: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 5:
            raise ValueError(
                f"na2d: {name} must have 5 dims [batch, X, Y, heads, head_dim] (heads-last layout), "
                f"got shape {tuple(t.shape)}; reshape a [B, X, Y, C] map with .view(B, X, Y, heads, C // heads)"
            )
    if key.shape != query.shape or value.shape != query.shape:
        raise ValueError(
            f"na2d: query, key and value must have the same shape [batch, X, Y, heads, head_dim], got "
            f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
        )
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(
            f"na2d: query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}; cast them first"
        )
    if key.device != query.device or value.device != query.device:
        raise ValueError("na2d: query, key and value must be on the same device")
    if not query.is_floating_point():
        raise ValueError(f"na2d: expected floating-point inputs, got {query.dtype}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise ValueError(f"na2d: kernel_size must be an int, got {kernel_size!r}")
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(
            f"na2d: kernel_size must be an odd integer >= 3, got {kernel_size}; use e.g. {max(3, kernel_size | 1)}"
        )
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"na2d: dilation must be an integer >= 1, got {dilation!r}")
    _, X, Y, heads, _ = query.shape
    for axis, size in (("X (dim 1)", X), ("Y (dim 2)", Y)):
        if size < kernel_size * dilation:
            raise ValueError(
                f"na2d: axis {axis} has size {size}, smaller than kernel_size * dilation = "
                f"{kernel_size} * {dilation} = {kernel_size * dilation}; pad the map to at least "
                f"{kernel_size * dilation} (DiNAT(small_input='pad') does this) or use a smaller dilation"
            )
    if rpb is not None:
        want = (heads, 2 * kernel_size - 1, 2 * kernel_size - 1)
        if not isinstance(rpb, torch.Tensor) or tuple(rpb.shape) != want:
            got = tuple(rpb.shape) if isinstance(rpb, torch.Tensor) else type(rpb).__name__
            raise ValueError(
                f"na2d: rpb must have shape [heads, 2*kernel_size-1, 2*kernel_size-1] = {list(want)}, got {got}"
            )
        if rpb.device != query.device:
            raise ValueError(f"na2d: rpb is on {rpb.device} but query is on {query.device}; move it with .to()")


# ----------------------------------------------------------------------------------------------
# Pure-PyTorch backend
# ----------------------------------------------------------------------------------------------
def _gather_row(x, keys_y, keys_x, a):
    """Neighbours in row offset ``a``: ``[B, X, Y, K, H, D]`` with ``out[b, i, j, t] = x[b, keys_y[i, a], keys_x[j, t]]``."""
    return x.index_select(1, keys_y[:, a])[:, :, keys_x]


def _qk(q, k, keys_y, keys_x):
    """``out[b, i, j, h, a, t] = q[b, i, j, h] . k[b, keys_y[i, a], keys_x[j, t], h]``."""
    B, X, Y, H, _ = q.shape
    K = keys_y.shape[1]
    out = q.new_empty(B, X, Y, H, K, K)
    for a in range(K):
        out[..., a, :] = torch.einsum("bxyhd,bxykhd->bxyhk", q, _gather_row(k, keys_y, keys_x, a))
    return out


def _av(attn, v, keys_y, keys_x):
    """``out[b, i, j, h] = sum_{a,t} attn[b, i, j, h, a, t] * v[b, keys_y[i, a], keys_x[j, t], h]``."""
    out = torch.zeros_like(v)
    for a in range(keys_y.shape[1]):
        out += torch.einsum("bxyhk,bxykhd->bxyhd", attn[..., a, :], _gather_row(v, keys_y, keys_x, a))
    return out


def _av_transposed(attn, x, keys_y, keys_x):
    """Adjoint of :func:`_av` w.r.t. v: ``out[key] = sum over queries q with key in N(q) of attn[q, key] * x[q]``."""
    B, X, Y, H, D = x.shape
    K = keys_y.shape[1]
    out = torch.zeros_like(x)
    flat_x = keys_x.reshape(-1)
    for a in range(K):
        contrib = torch.einsum("bxyhk,bxyhd->bxykhd", attn[..., a, :], x).reshape(B, X, Y * K, H, D)
        rows = torch.zeros_like(x).index_add_(2, flat_x, contrib)
        out.index_add_(1, keys_y[:, a], rows)
    return out


def _rpb_flat_index(rpb_y, rpb_x, kernel_size):
    """``[X, Y, K, K]`` index into ``rpb.view(heads, -1)``."""
    return rpb_y[:, None, :, None] * (2 * kernel_size - 1) + rpb_x[None, :, None, :]


def _rpb_bias(rpb, rpb_y, rpb_x, kernel_size):
    """Bias ``[X, Y, H, K, K]`` for every query and neighbour."""
    idx = _rpb_flat_index(rpb_y, rpb_x, kernel_size)
    return rpb.reshape(rpb.shape[0], -1)[:, idx].permute(1, 2, 0, 3, 4)


def _compute_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _torch_logits(q, k, rpb, kernel_size, dilation, scale):
    _, X, Y, _, _ = q.shape
    keys_y, rpb_y = neighborhood_indices(X, kernel_size, dilation, q.device)
    keys_x, rpb_x = neighborhood_indices(Y, kernel_size, dilation, q.device)
    logits = _qk(q, k, keys_y, keys_x) * scale
    if rpb is not None:
        logits = logits + _rpb_bias(rpb.to(logits.dtype), rpb_y, rpb_x, kernel_size)
    return logits, (keys_y, keys_x, rpb_y, rpb_x)


def _softmax_k2(logits):
    shape = logits.shape
    return torch.softmax(logits.reshape(*shape[:-2], -1), dim=-1).reshape(shape)


class _NA2DTorchFunction(torch.autograd.Function):
    """Pure-PyTorch neighbourhood attention with a hand-written backward.

    Saves q, k, v and the attention weights (O(N * K^2)); gathered neighbours are produced one
    kernel row at a time and never kept.
    """

    @staticmethod
    def forward(ctx, q, k, v, rpb, kernel_size, dilation, scale):
        in_dtype = q.dtype
        cdt = _compute_dtype(in_dtype)
        q, k, v = q.to(cdt), k.to(cdt), v.to(cdt)
        logits, idx = _torch_logits(q, k, rpb, kernel_size, dilation, scale)
        attn = _softmax_k2(logits)
        out = _av(attn, v, idx[0], idx[1])
        ctx.save_for_backward(q, k, v, attn)
        ctx.idx = idx
        ctx.meta = (kernel_size, scale, in_dtype, None if rpb is None else rpb.dtype)
        return out.to(in_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, attn = ctx.saved_tensors
        keys_y, keys_x, rpb_y, rpb_x = ctx.idx
        kernel_size, scale, in_dtype, rpb_dtype = ctx.meta
        g = grad_out.to(q.dtype)
        grad_attn = _qk(g, v, keys_y, keys_x)
        grad_logits = attn * (grad_attn - (grad_attn * attn).sum(dim=(-2, -1), keepdim=True))
        dq = dk = dv = drpb = None
        if ctx.needs_input_grad[0]:
            dq = (_av(grad_logits, k, keys_y, keys_x) * scale).to(in_dtype)
        if ctx.needs_input_grad[1]:
            dk = (_av_transposed(grad_logits, q, keys_y, keys_x) * scale).to(in_dtype)
        if ctx.needs_input_grad[2]:
            dv = _av_transposed(attn, g, keys_y, keys_x).to(in_dtype)
        if rpb_dtype is not None and ctx.needs_input_grad[3]:
            heads = q.shape[3]
            idx = _rpb_flat_index(rpb_y, rpb_x, kernel_size).reshape(-1)
            per_head = grad_logits.sum(0).permute(2, 0, 1, 3, 4).reshape(heads, -1)
            drpb = q.new_zeros(heads, (2 * kernel_size - 1) ** 2).index_add_(1, idx, per_head)
            drpb = drpb.view(heads, 2 * kernel_size - 1, 2 * kernel_size - 1).to(rpb_dtype)
        return dq, dk, dv, drpb, None, None, None


def na2d_torch(query, key, value, kernel_size, dilation=1, rpb=None, scale=None, attn_drop: float = 0.0, training: bool = False):
    """Pure-PyTorch path. With ``attn_drop > 0`` in training it uses plain autograd (needed for
    dropout on the attention weights); otherwise the memory-lean custom autograd function."""
    if scale is None:
        scale = query.shape[-1] ** -0.5
    if attn_drop > 0.0 and training:
        cdt = _compute_dtype(query.dtype)
        q, k, v = query.to(cdt), key.to(cdt), value.to(cdt)
        logits, idx = _torch_logits(q, k, rpb, kernel_size, dilation, scale)
        attn = F.dropout(_softmax_k2(logits), p=attn_drop, training=True)
        return _av(attn, v, idx[0], idx[1]).to(query.dtype)
    return _NA2DTorchFunction.apply(query, key, value, rpb, kernel_size, dilation, float(scale))


# ----------------------------------------------------------------------------------------------
# Compiled CPU kernel (dinat_backbone._C)
# ----------------------------------------------------------------------------------------------
try:  # the extension registers torch.ops.dinat.* on import
    from . import _C  # noqa: F401

    _CPU_KERNEL_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the build
    _C = None
    _CPU_KERNEL_ERROR = exc

_warned_no_kernel = False


def cpu_kernel_available() -> bool:
    """True when the compiled CPU kernel was built and imports."""
    return _C is not None and hasattr(torch.ops, "dinat") and hasattr(torch.ops.dinat, "na2d_forward")


def _warn_no_kernel_once():
    global _warned_no_kernel
    if not _warned_no_kernel:
        _warned_no_kernel = True
        warnings.warn(
            "dinat_backbone: the compiled CPU kernel (dinat_backbone._C) is not available "
            f"({_CPU_KERNEL_ERROR!r}); using the much slower pure-PyTorch path. Rebuild it with "
            "`pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )


#: largest kernel size the compiled kernel handles (its stack buffers are sized by it); larger
#: kernels take the pure-PyTorch path
CPU_KERNEL_MAX_KERNEL_SIZE = 31


def _compute_dtype_of(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_cpu_kernel_python_parts():
    """Fake (meta) implementations and autograd for ``torch.ops.dinat.*``, so that autograd works
    and ``torch.compile`` traces the op without graph breaks."""

    @torch.library.register_fake("dinat::na2d_forward")
    def _na2d_forward_fake(query, key, value, rpb, kernel_size, dilation, scale, save_weights):
        B, X, Y, H, D = query.shape
        cdt = _compute_dtype_of(query.dtype)
        out = query.new_empty((B, X, Y, H, D))
        if save_weights:
            weights = query.new_empty((B, X, kernel_size * kernel_size, Y, H), dtype=cdt)
        else:
            weights = query.new_empty((0,), dtype=cdt)
        return out, weights

    @torch.library.register_fake("dinat::na2d_backward")
    def _na2d_backward_fake(grad_out, query, key, value, weights, rpb, kernel_size, dilation, scale):
        shape = tuple(query.shape)
        grads = [query.new_empty(shape) for _ in range(3)]
        drpb = rpb.new_empty(tuple(rpb.shape)) if rpb is not None else query.new_empty((0,))
        return grads[0], grads[1], grads[2], drpb

    def _setup_context(ctx, inputs, output):
        query, key, value, rpb, kernel_size, dilation, scale, save_weights = inputs
        _, weights = output
        ctx.save_for_backward(query, key, value, weights, rpb)
        ctx.params = (kernel_size, dilation, scale, save_weights)
        ctx.mark_non_differentiable(weights)

    def _backward(ctx, grad_out, _grad_weights):
        query, key, value, weights, rpb = ctx.saved_tensors
        kernel_size, dilation, scale, save_weights = ctx.params
        if not save_weights:
            raise RuntimeError(
                "na2d (cpu kernel): backward needs the attention weights, but the forward ran with "
                "save_weights=False (no input required grad, or grad mode was off); call na2d with "
                "inputs that require grad"
            )
        dq, dk, dv, drpb = torch.ops.dinat.na2d_backward(
            grad_out, query, key, value, weights, rpb, kernel_size, dilation, scale
        )
        return dq, dk, dv, (drpb if rpb is not None else None), None, None, None, None

    torch.library.register_autograd("dinat::na2d_forward", _backward, setup_context=_setup_context)


if cpu_kernel_available():
    _register_cpu_kernel_python_parts()


def _tracing_for_export() -> bool:
    """ONNX export / TorchScript tracing / torch.export: they need decomposable ops, not our custom op."""
    if torch.jit.is_tracing():
        return True
    try:
        if torch.onnx.is_in_onnx_export():
            return True
    except Exception:  # pragma: no cover - torch builds without onnx
        pass
    is_exporting = getattr(getattr(torch, "compiler", None), "is_exporting", None)
    return bool(is_exporting()) if is_exporting is not None else False


def _na2d_torch_decomposed(query, key, value, kernel_size, dilation, rpb, scale):
    """Forward with plain tensor ops (no autograd.Function, no custom op): traceable and exportable."""
    cdt = _compute_dtype(query.dtype)
    q, k, v = query.to(cdt), key.to(cdt), value.to(cdt)
    logits, idx = _torch_logits(q, k, rpb, kernel_size, dilation, scale)
    return _av(_softmax_k2(logits), v, idx[0], idx[1]).to(query.dtype)


def na2d_cpu(query, key, value, kernel_size, dilation=1, rpb=None, scale=None):
    """Compiled CPU kernel path (forward and backward in C++, ``torch.ops.dinat.na2d_forward``).

    The attention weights (``[B, X, K*K, Y, heads]``, float32 / float64) are kept for backward
    only when an input requires grad. Kernels larger than :data:`CPU_KERNEL_MAX_KERNEL_SIZE` and
    export tracing take the pure-PyTorch path.
    """
    if scale is None:
        scale = query.shape[-1] ** -0.5
    if _tracing_for_export():
        return _na2d_torch_decomposed(query, key, value, kernel_size, dilation, rpb, scale)
    if kernel_size > CPU_KERNEL_MAX_KERNEL_SIZE:
        return na2d_torch(query, key, value, kernel_size, dilation, rpb, scale)
    if not cpu_kernel_available():
        raise RuntimeError(
            f"na2d: the compiled CPU kernel is not available ({_CPU_KERNEL_ERROR!r}); rebuild with "
            "`pip install --no-build-isolation -e .` or use backend='torch'"
        )
    save_weights = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, rpb)
    )
    out, _ = torch.ops.dinat.na2d_forward(query, key, value, rpb, kernel_size, dilation, float(scale), save_weights)
    return out


# ----------------------------------------------------------------------------------------------
# flex_attention backend (GPU path with RPB)
# ----------------------------------------------------------------------------------------------
def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except Exception:
        return False
    return True


def neighborhood_mask_mod(height: int, width: int, kernel_size: int, dilation: int):
    """flex_attention ``mask_mod`` on flattened ``X * Y`` indices: True where the key is a neighbour."""

    def axis_ok(qi, ki, length):
        start = window_start(qi, length, kernel_size, dilation)
        t = (ki - qi % dilation) // dilation - start
        return (ki % dilation == qi % dilation) & (t >= 0) & (t < kernel_size)

    def mask_mod(b, h, q_idx, kv_idx):
        return axis_ok(q_idx // width, kv_idx // width, height) & axis_ok(q_idx % width, kv_idx % width, width)

    return mask_mod


def rpb_score_mod(rpb: torch.Tensor, width: int, kernel_size: int, dilation: int):
    """flex_attention ``score_mod`` adding ``rpb[h, K-1 + dy/d, K-1 + dx/d]`` (clamped, so masked-out
    pairs index inside the table; the mask removes them)."""
    hi = 2 * kernel_size - 2

    def score_mod(score, b, h, q_idx, kv_idx):
        dy = torch.div(kv_idx // width - q_idx // width, dilation, rounding_mode="floor")
        dx = torch.div(kv_idx % width - q_idx % width, dilation, rounding_mode="floor")
        iy = torch.clamp(dy + kernel_size - 1, 0, hi)
        ix = torch.clamp(dx + kernel_size - 1, 0, hi)
        return score + rpb[h, iy, ix].to(score.dtype)

    return score_mod


@functools.lru_cache(maxsize=64)
def _block_mask_cached(height, width, kernel_size, dilation, device, block_size):
    from torch.nn.attention.flex_attention import create_block_mask

    n = height * width
    return create_block_mask(
        neighborhood_mask_mod(height, width, kernel_size, dilation), None, None, n, n,
        device=device, BLOCK_SIZE=block_size,
    )


def neighborhood_block_mask(height, width, kernel_size, dilation, device, block_size=128):
    """Block mask of the neighbourhood, built once per (map size, kernel, dilation, device) and cached."""
    return _block_mask_cached(int(height), int(width), int(kernel_size), int(dilation), str(torch.device(device)), int(block_size))


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def na2d_flex(query, key, value, kernel_size, dilation=1, rpb=None, scale=None, compile: Optional[bool] = None):
    """flex_attention path. ``compile`` defaults to True on CUDA (eager flex_attention materialises
    the full score matrix, so it is only usable for small maps, e.g. CPU tests)."""
    from torch.nn.attention.flex_attention import flex_attention

    B, X, Y, H, D = query.shape
    if scale is None:
        scale = D ** -0.5
    if compile is None:
        compile = query.is_cuda
    # [B, X, Y, H, D] -> [B, H, X*Y, D]
    q, k, v = (t.reshape(B, X * Y, H, D).transpose(1, 2) for t in (query, key, value))
    mask = neighborhood_block_mask(X, Y, kernel_size, dilation, query.device)
    score_mod = None if rpb is None else rpb_score_mod(rpb, Y, kernel_size, dilation)
    fn = _compiled_flex() if compile else flex_attention
    out = fn(q, k, v, score_mod=score_mod, block_mask=mask, scale=float(scale))
    return out.transpose(1, 2).reshape(B, X, Y, H, D)


# ----------------------------------------------------------------------------------------------
# natten backend (fused, no RPB)
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _natten_na2d():
    try:
        import natten  # noqa: F401
        from natten.functional import na2d as fn
    except Exception:
        return None
    return fn


def na2d_natten(query, key, value, kernel_size, dilation=1, rpb=None, scale=None):
    if rpb is not None:
        raise ValueError("na2d: the natten backend has no relative positional bias; use backend='flex' or 'torch'")
    fn = _natten_na2d()
    if fn is None:
        raise RuntimeError("na2d: backend='natten' needs natten (>= 0.20) with compiled kernels; `pip install natten`")
    return fn(query, key, value, kernel_size=kernel_size, dilation=dilation, scale=scale)


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------
def available_backends(device="cpu", with_rpb: bool = True):
    """Backends that can serve a call on ``device`` (with or without rpb), fastest first."""
    device = torch.device(device)
    out = []
    if device.type == "cuda":
        if not with_rpb and _natten_na2d() is not None:
            out.append("natten")
        if _flex_available():
            out.append("flex")
    if device.type == "cpu" and cpu_kernel_available():
        out.append("cpu")
    out.append("torch")
    return out


def _select_backend(query, rpb, backend):
    requested = backend or os.environ.get(BACKEND_ENV) or None
    if requested is not None:
        requested = requested.lower()
        if requested not in BACKENDS:
            raise ValueError(f"na2d: unknown backend {requested!r}; choose one of {BACKENDS} (or None for automatic)")
        if requested == "cpu" and query.device.type != "cpu":
            raise ValueError(f"na2d: backend='cpu' needs CPU tensors, got {query.device}")
        if requested == "cpu" and not cpu_kernel_available():
            raise RuntimeError(
                f"na2d: backend='cpu' requested but the compiled kernel is not available ({_CPU_KERNEL_ERROR!r}); "
                "rebuild with `pip install --no-build-isolation -e .` or use backend='torch'"
            )
        if requested == "natten":
            if rpb is not None:
                raise ValueError("na2d: backend='natten' cannot apply a relative positional bias; use 'flex' or 'torch'")
            if _natten_na2d() is None:
                raise RuntimeError("na2d: backend='natten' requested but natten is not installed")
        if requested == "flex" and not _flex_available():
            raise RuntimeError("na2d: backend='flex' needs torch.nn.attention.flex_attention (torch >= 2.5)")
        return requested
    if query.device.type == "cpu":
        if cpu_kernel_available():
            return "cpu"
        _warn_no_kernel_once()
        return "torch"
    if query.device.type == "cuda":
        if rpb is None and _natten_na2d() is not None:
            return "natten"
        if _flex_available():
            return "flex"
    return "torch"


def na2d(query, key, value, kernel_size: int, dilation: int = 1, rpb: Optional[torch.Tensor] = None,
         scale: Optional[float] = None, backend: Optional[str] = None) -> torch.Tensor:
    """2-D (dilated) neighbourhood attention with optional relative positional bias.

    Args:
        query, key, value: ``[batch, X, Y, heads, head_dim]``.
        kernel_size: odd int >= 3. dilation: int >= 1. Each of X, Y must be >= kernel_size * dilation.
        rpb: ``[heads, 2*kernel_size-1, 2*kernel_size-1]`` or None.
        scale: multiplies q.k; default ``head_dim ** -0.5``.
        backend: None (fastest valid), or one of ``"cpu"``, ``"torch"``, ``"flex"``, ``"natten"``,
            ``"triton"`` (fused Triton kernels; CUDA, or CPU under ``TRITON_INTERPRET=1``).

    Returns:
        ``[batch, X, Y, heads, head_dim]``, the dtype of the inputs.
    """
    global last_backend
    _check_inputs(query, key, value, kernel_size, dilation, rpb)
    if scale is None:
        scale = query.shape[-1] ** -0.5
    name = _select_backend(query, rpb, backend)
    last_backend = name
    if not torch.compiler.is_compiling() and logger.isEnabledFor(logging.DEBUG):
        logger.debug("na2d: backend=%s shape=%s K=%d d=%d rpb=%s", name, tuple(query.shape), kernel_size, dilation, rpb is not None)
    if name == "cpu":
        return na2d_cpu(query, key, value, kernel_size, dilation, rpb, scale)
    if name == "flex":
        return na2d_flex(query, key, value, kernel_size, dilation, rpb, scale)
    if name == "natten":
        return na2d_natten(query, key, value, kernel_size, dilation, None, scale)
    if name == "triton":  # explicit requests only; it raises, with the reasons, where it cannot serve the call
        from .na2d_triton import na2d_triton

        return na2d_triton(query, key, value, kernel_size, dilation, rpb, scale)
    return na2d_torch(query, key, value, kernel_size, dilation, rpb, scale)


# ----------------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------------
class NeighborhoodAttention2D(nn.Module):
    """Multi-head (dilated) neighbourhood attention on ``[B, X, Y, C]`` maps.

    Parameter names (``qkv``, ``rpb``, ``proj``) match the original DiNAT / NAT checkpoints.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, dilation: int = 1, bias: bool = True,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, backend: Optional[str] = None):
        super().__init__()
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(
                f"NeighborhoodAttention2D: expected a channels-last map [B, X, Y, {self.dim}], got {tuple(x.shape)}"
            )
        B, X, Y, C = x.shape
        qkv = self.qkv(x).view(B, X, Y, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(3)
        if self.attn_drop > 0.0 and self.training:
            out = na2d_torch(q, k, v, self.kernel_size, self.dilation, self.rpb, self.scale, self.attn_drop, True)
        else:
            out = na2d(q, k, v, self.kernel_size, self.dilation, self.rpb, self.scale, self.backend)
        return self.proj_drop(self.proj(out.reshape(B, X, Y, C)))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, rpb={self.rpb is not None}")
