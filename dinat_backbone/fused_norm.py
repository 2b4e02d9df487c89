"""CPU bfloat16 LayerNorm of the DiNAT model through the compiled kernel (``torch.ops.dinat.layer_norm``),
fused with the residual add before norm2 in inference.

ATen's bfloat16 LayerNorm on CPU is slow on DiNAT's short rows: at the 800 x 1216 COCO size, stage 1
is a 60800 x 64 map, which ATen normalises in 2.3-2.7 ms while a copy of it takes 0.3 ms; the
block's ``x + attn`` before norm2 is one more pass. The kernel takes 0.7 ms, 1.2 ms with the add,
and its backward 0.8 ms against ATen's 2.6 (``python tools/benchmark_layer_norm.py``; 2-core AMD
EPYC, 2 threads). LayerNorm was ~6 % of DiNAT-T's bfloat16 forward. Float32 tensors keep ATen's:
there the kernel is no faster (``--dtype float32``).

Values: float32 statistics (two passes over each row in L1), output rounded once; the sum is
rounded to bfloat16 before the statistics, as the plain add stores it. Equal to ATen's output
within one rounding (bit for bit at DiNAT-T's shapes here); the weight / bias gradients are
float32-accurate, where ATen's bfloat16 backward rounds them to bfloat16.

Used, like :mod:`dinat_backbone.fused_linear`, only where nothing can tell the difference: CPU
bfloat16 maps (the residual stream under CPU bf16 autocast, or a bf16 model), exactly
``nn.LayerNorm`` over the last axis without hooks, not while tracing or exporting, and with
``set_fused_norm(True)`` (the default). Where autograd needs a graph (training), :func:`layer_norm`
runs the kernel's forward and backward in an autograd function (first derivatives, as the
memory-lean block functions of :mod:`dinat_backbone.lean`, which run the blocks' norms in the kernel
too); the fused add is for inference. Everything else runs the modules as written.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from .fused_linear import hook_free, tracing
from .ops import cpu as cpu_ops

__all__ = ["set_fused_norm", "fused_norm_enabled", "layer_norm", "add_layer_norm"]

_ENABLED = True


def set_fused_norm(enabled: bool) -> None:
    """Turn the kernel's LayerNorm on (default) or off, process-wide (A/B comparisons, debugging)."""
    global _ENABLED
    _ENABLED = bool(enabled)


def fused_norm_enabled() -> bool:
    """Whether the switch is on and the compiled kernel has the LayerNorm."""
    return _ENABLED and cpu_ops._HAS_LAYER_NORM


def _kernel_ok(x: torch.Tensor, norm: nn.Module, residual: Optional[torch.Tensor]) -> bool:
    """Whether the kernel computes exactly what ``norm(x [+ residual])`` would here (no tracing); the
    callers then run the op itself (cpu_ops.layer_norm would check its tensors a second time)."""
    if not fused_norm_enabled() or type(norm) is not nn.LayerNorm or type(x) is not torch.Tensor:
        return False
    if x.layout != torch.strided or tuple(norm.normalized_shape) != tuple(x.shape[-1:]):
        return False
    if residual is not None and (type(residual) is not torch.Tensor or residual.layout != torch.strided):
        return False
    if not cpu_ops.layer_norm_applies(x, norm.weight, norm.bias, residual):
        return False
    if torch.is_autocast_enabled("cpu"):
        from .lean import _autocast_layer_norm_in_float32  # this build's autocast policy for layer_norm

        if _autocast_layer_norm_in_float32(x, torch.get_autocast_dtype("cpu")):
            return False  # plain runs it in float32 there (not on CPU in torch <= 2.13)
    return hook_free(norm) and not tracing()


def _needs_graph(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _KernelLayerNorm(torch.autograd.Function):
    """``norm(x)`` through the kernel, forward and backward, where autograd needs a graph (the
    training step's patch-embedding, downsampler and output norms; the blocks' norms run in the
    memory-lean functions of :mod:`dinat_backbone.lean`). First derivatives only, like those."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        out, _, mean, rstd = torch.ops.dinat.layer_norm(x, None, weight, bias, eps)
        ctx.save_for_backward(x, mean, rstd, weight)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, mean, rstd, weight = ctx.saved_tensors
        grads = cpu_ops.layer_norm_backward(grad_out, x, mean, rstd, weight, ctx.needs_input_grad[:3])
        return (*grads, None)


def layer_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``norm(x)``; for a hook-free ``nn.LayerNorm`` on a CPU bfloat16 map, through the
    kernel (see the module docstring), with autograd where a graph is needed."""
    if not torch.compiler.is_compiling() and _kernel_ok(x, norm, None):
        if _needs_graph(x, norm.weight, norm.bias):
            return _KernelLayerNorm.apply(x, norm.weight, norm.bias, float(norm.eps))
        return torch.ops.dinat.layer_norm(x, None, norm.weight, norm.bias, float(norm.eps))[0]
    return norm(x)


def add_layer_norm(x: torch.Tensor, y: torch.Tensor, norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x + y, norm(x + y))``: the residual add and the next LayerNorm, in one pass of the kernel
    where :func:`layer_norm` would use it, x and y have one dtype and shape, and no graph is needed
    (else the add, then :func:`layer_norm`)."""
    if (not torch.compiler.is_compiling() and _kernel_ok(x, norm, y)
            and not _needs_graph(x, y, norm.weight, norm.bias)):
        normed, total, _, _ = torch.ops.dinat.layer_norm(x, y, norm.weight, norm.bias, float(norm.eps))
        return total, normed
    total = x + y
    return total, layer_norm(total, norm)
