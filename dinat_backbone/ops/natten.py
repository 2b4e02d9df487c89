"""Backend ``natten``: ``natten.functional.na2d``, NATTEN >= 0.20's fused kernels (optional dependency).

CUDA only, and only without a relative positional bias: NATTEN dropped RPB in 0.20, and every
published DiNAT / NAT checkpoint has one, so this serves RPB-free models (``bias=False``).
NATTEN is itself a dispatcher over several kernels (CUTLASS FNA for Ampere / Hopper / Blackwell,
Flex Attention) whose limits (head dims, dtypes, architectures) are its own: this backend asks
natten's compatibility query (``natten.backends.get_compatible_backends``) rather than repeating
them, so a call is never selected for natten and refused inside it.
"""
from __future__ import annotations

import functools
from typing import List

import torch

from .backend import Backend, Call, Capabilities

NAME = "natten"
__all__ = ["NAME", "BACKEND", "run", "natten_na2d"]

CAPABILITIES = Capabilities(devices=("cuda",), rpb=False, rpb_hint=" (NATTEN >= 0.20 dropped RPB)")


@functools.lru_cache(maxsize=1)
def natten_na2d():
    """``natten.functional.na2d`` or None when natten (with compiled kernels) is not installed."""
    try:
        import natten  # noqa: F401
        from natten.functional import na2d as fn
    except Exception:
        return None
    return fn


@functools.lru_cache(maxsize=1)
def _compatibility_query():
    """``natten.backends.get_compatible_backends(q, k, v, torch_compile)`` where this natten has it."""
    try:
        from natten.backends import get_compatible_backends
    except Exception:
        return None
    return get_compatible_backends


def _extra_reasons(call: Call) -> List[str]:
    # natten is imported only for CUDA calls (the data says why the others cannot run; and the
    # import is no traceable step under torch.compile)
    if call.device.type != "cuda":
        return []
    if natten_na2d() is None:
        return ["natten (>= 0.20, with compiled kernels) is not installed: `pip install natten`"]
    query = _compatibility_query()
    if query is None:
        return []
    # a stand-in of the call's shape, dtype and device (no memory): what natten's checks read
    like = torch.empty((), dtype=call.dtype, device=call.device).expand(call.shape)
    if not query(like, like, like, torch_compile=torch.compiler.is_compiling()):
        return [f"natten has no kernel for this call (head_dim {call.head_dim}, {call.dtype}, {call.device}): "
                "natten.backends.get_compatible_backends found none; NATTEN_LOG_LEVEL=DEBUG says why"]
    return []


class _NoDoubleBackward(torch.autograd.Function):
    """Identity whose backward refuses ``create_graph=True``: natten's kernels give no second
    derivatives this package can vouch for, and a silently wrong Hessian is worse than an error."""

    @staticmethod
    def forward(ctx, out):
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "na2d (natten backend): second derivatives (backward with create_graph=True: a Hessian, a "
                "gradient penalty) are not supported by natten's kernels; run that model with "
                "attn_backend='triton' or 'torch' (or backend= on na2d), whose backward is differentiable")
        return grad


def run(query, key, value, rpb, scale, call: Call):
    out = natten_na2d()(query, key, value, kernel_size=call.kernel_size, dilation=call.dilation, scale=scale)
    return _NoDoubleBackward.apply(out) if call.needs_grad else out


BACKEND = Backend(NAME, CAPABILITIES, run, _extra_reasons)
