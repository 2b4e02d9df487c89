"""Input validation shared by every call of :func:`dinat_backbone.ops.na2d` (whatever backend runs)."""
from __future__ import annotations

import numbers

import torch

__all__ = ["check_inputs", "compute_dtype", "require_int"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """What the backends compute in: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def require_int(owner: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError naming ``owner``'s argument: for constructor arguments that
    size things (a float such as 7.0 or a bool is refused, not rounded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__}); "
                         f"pass e.g. {name}={max(minimum, int(value)) if isinstance(value, (int, float)) else minimum}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_inputs(query, key, value, kernel_size, dilation, rpb, check_size: bool = True):
    """ValueError / TypeError naming the problem and the fix. ``check_size=False`` leaves out the
    ``map >= kernel_size * dilation`` check (for calls that pad small maps themselves)."""
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
            f"na2d: query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}; "
            "cast them first"
        )
    if key.device != query.device or value.device != query.device:
        raise ValueError("na2d: query, key and value must be on the same device")
    if not query.is_floating_point():
        raise ValueError(f"na2d: expected floating-point inputs, got {query.dtype}")
    _, X, Y, heads, head_dim = query.shape
    if heads < 1 or head_dim < 1:
        raise ValueError(
            f"na2d: heads and head_dim must be >= 1, got shape {tuple(query.shape)} (heads {heads}, head_dim "
            f"{head_dim}); check that the channel count is num_heads * head_dim"
        )
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise ValueError(f"na2d: kernel_size must be an int, got {kernel_size!r}")
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(
            f"na2d: kernel_size must be an odd integer >= 3, got {kernel_size}; use e.g. {max(3, kernel_size | 1)}"
        )
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"na2d: dilation must be an integer >= 1, got {dilation!r}")
    if check_size:
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
