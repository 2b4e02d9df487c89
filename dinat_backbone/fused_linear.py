"""CPU Linear layers through oneDNN's linear primitive, the bias (and the MLP's GELU) fused into it.

``F.linear`` on CPU runs ``addmm``, which first fills the output with the broadcast bias and then
accumulates the matrix product into it: a full extra pass over every Linear output, ~7 % of
DiNAT-T's bfloat16 forward at 800x1216, and the MLP's GELU is one more pass over the widest
activation. oneDNN's inner-product primitive (``torch.ops.mkldnn._linear_pointwise``, the op
inductor emits for CPU Linears) adds the bias and applies GELU to the accumulator before the
single write. Measured on a 2-core AMD EPYC (AVX512_BF16), bfloat16: fc1 + GELU at DiNAT-T's
stage-1 shape (60800 x 64 -> 192) 29 -> 9 ms; the whole eval forward under autocast 0.79 -> 0.70 s.

Values: without GELU the same products as ``F.linear`` (bit-identical in bfloat16 here, float32
within the usual GEMM reordering, ~1e-6 relative); with GELU, computed on the float32 accumulator
before rounding to bfloat16 rather than after (the fused result is the more accurate one).

Used only where nothing can tell the difference: CPU strided tensors of float32 / bfloat16, no
autograd graph to build (``torch.no_grad()`` inference, or inside the training path's own autograd
functions, :mod:`dinat_backbone.lean`), exactly ``nn.Linear`` / ``nn.GELU()`` modules without hooks
(so forward hooks, quantisation wrappers and LoRA layers see their calls), and not while
``torch.compile``, export, ``torch.jit`` or ``torch.fx`` trace (they get plain ops, which inductor
fuses itself). Everything else, and ``set_fused_linear(False)``, runs the modules as written.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["set_fused_linear", "fused_linear_enabled", "linear", "linear_gelu", "linear_weights", "hook_free",
           "exact_gelu", "tracing"]

_ENABLED = True
#: this torch build has the primitive (CPU wheels do; read once, not in the traced code)
_HAVE_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def set_fused_linear(enabled: bool) -> None:
    """Turn the oneDNN path on (default) or off, process-wide (A/B comparisons, debugging)."""
    global _ENABLED
    _ENABLED = bool(enabled)


def fused_linear_enabled() -> bool:
    """Whether the oneDNN path is on and available (``torch.backends.mkldnn.flags(enabled=False)`` turns it off too)."""
    return _ENABLED and _HAVE_ONEDNN and torch.backends.mkldnn.enabled


def tracing() -> bool:
    """torch.compile, export, torch.jit or torch.fx is tracing the caller (plain ops wanted there)."""
    if torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    fx = torch.fx._symbolic_trace
    if getattr(fx, "is_fx_symbolic_tracing", getattr(fx, "is_fx_tracing", lambda: False))():
        return True
    from .ops.export import exporting  # here: ops.modules imports this module

    return exporting()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a Linear on ``x`` computes in: autocast's on the CPU when enabled, else x's."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype) -> bool:
    """Whether the primitive computes exactly the Linear of these tensors (no graph, no tracing)."""
    if not fused_linear_enabled() or type(x) is not torch.Tensor or x.device.type != "cpu" or x.layout != torch.strided:
        return False
    if dtype not in (torch.float32, torch.bfloat16) or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    if type(weight) not in (torch.Tensor, nn.Parameter) or weight.device.type != "cpu" or weight.dim() != 2:
        return False
    if not torch.is_autocast_enabled("cpu") and (
            weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype)):
        return False  # mixed dtypes outside autocast: F.linear raises its own error
    needs_graph = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and needs_graph:
        return False
    return not tracing()


def linear_weights(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (then exact GELU with ``gelu``), on oneDNN's fused primitive
    where it applies (see the module docstring); under CPU autocast in autocast's dtype."""
    dtype = None if torch.compiler.is_compiling() else _compute_dtype(x)
    if dtype is not None and _onednn_ok(x, weight, bias, dtype):
        with torch.autocast("cpu", enabled=False):
            return torch.ops.mkldnn._linear_pointwise(
                x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                "gelu" if gelu else "none", [], "none" if gelu else "")
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out


def hook_free(*modules: nn.Module) -> bool:
    """No forward hooks anywhere that could see these modules' calls."""
    from torch.nn.modules import module as module_mod
    if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``layer(x)``; for a hook-free ``nn.Linear``, through :func:`linear_weights`."""
    if not torch.compiler.is_compiling() and type(layer) is nn.Linear and hook_free(layer):
        return linear_weights(x, layer.weight, layer.bias)
    return layer(x)


def exact_gelu(act) -> bool:
    """Whether ``act`` is the exact (erf) GELU: ``nn.GELU()``, ``F.gelu`` itself, or transformers'
    ``ACT2FN['gelu']`` (a ``GELUActivation`` module calling ``F.gelu``)."""
    if act is F.gelu:
        return True
    if type(act) is nn.GELU:
        return act.approximate == "none"
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu


def linear_gelu(x: torch.Tensor, layer: nn.Module, act) -> torch.Tensor:
    """``act(layer(x))``; for a hook-free ``nn.Linear`` and an exact GELU (:func:`exact_gelu`; a
    module without hooks), fused."""
    acts = [act] if isinstance(act, nn.Module) else []
    if (not torch.compiler.is_compiling() and type(layer) is nn.Linear and exact_gelu(act)
            and hook_free(layer, *acts)):
        return linear_weights(x, layer.weight, layer.bias, gelu=True)
    return act(layer(x))
