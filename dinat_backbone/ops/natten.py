"""Backend ``natten``: ``natten.functional.na2d``, NATTEN >= 0.20's fused kernels.

CUDA only, and only without a relative positional bias: NATTEN dropped RPB in 0.20, and every
published DiNAT / NAT checkpoint has one, so this serves RPB-free models (``bias=False``).
"""
from __future__ import annotations

import functools
from typing import List

NAME = "natten"
__all__ = ["NAME", "reasons", "run", "natten_na2d"]


@functools.lru_cache(maxsize=1)
def natten_na2d():
    """``natten.functional.na2d`` or None when natten (with compiled kernels) is not installed."""
    try:
        import natten  # noqa: F401
        from natten.functional import na2d as fn
    except Exception:
        return None
    return fn


def reasons(query, rpb, kernel_size, dilation, needs_grad, attn_dropout, exporting) -> List[str]:
    out = []
    if query.device.type != "cuda":
        out.append(f"needs CUDA tensors, got {query.device}")
    elif natten_na2d() is None:  # (only probed for CUDA calls: the import is no traceable step under torch.compile)
        out.append("natten (>= 0.20, with compiled kernels) is not installed: `pip install natten`")
    if rpb is not None:
        out.append("it has no relative positional bias (NATTEN >= 0.20 dropped RPB)")
    if attn_dropout > 0.0:
        out.append("attention dropout (fused kernel)")
    if exporting:
        out.append("exporting: a custom op cannot go into an ONNX / torch.export graph")
    return out


def run(query, key, value, kernel_size, dilation, rpb, scale, attn_drop):
    return natten_na2d()(query, key, value, kernel_size=kernel_size, dilation=dilation, scale=scale)
