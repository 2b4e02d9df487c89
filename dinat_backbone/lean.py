"""Memory-lean training functions of the DiNAT block: ``linear(layer_norm(x))`` and
``linear(gelu(h))`` as autograd functions that keep the narrow inputs for backward and recompute
the wide intermediate there. Same values and gradients as the plain modules; they save one
activation of the block's width per LayerNorm -> Linear pair (norm1 -> qkv, norm2 -> fc1) and the
GELU output of the MLP (DiNAT-T training peak memory 1.16x -> 0.82x Swin-T when introduced).

Under autocast they compute what the plain modules compute there: LayerNorm in the dtype autocast
gives it on the tensor's device (float32 on CUDA, where layer_norm is on autocast's float32 list; on
CPU, where it is not, in x's own dtype: bfloat16 for a bfloat16 residual stream, with float32
statistics and accumulation inside the kernel), the Linear in the autocast dtype (operands cast to
it, gradients cast back to the parameters' dtype), GELU in its input's dtype. The autocast dtypes are
read once per call and passed in; forward and backward run with autocast off and cast explicitly,
so backward (which autocast does not reach) computes in the dtypes the forward used.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fused_linear import linear_weights
from .fused_norm import fused_norm_enabled
from .ops.cpu import gelu_backward as cpu_gelu_backward
from .ops.cpu import layer_norm as cpu_layer_norm
from .ops.cpu import layer_norm_backward as cpu_layer_norm_backward

__all__ = ["layer_norm_linear", "gelu_linear"]


def _autocast_dtype(t: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast runs a Linear in on ``t``'s device, or None outside autocast."""
    device_type = t.device.type
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


# (device type, autocast dtype) -> whether autocast runs layer_norm there in float32. Decided by
# asking autocast itself (one tiny layer_norm per key and process) rather than by a table: the
# policy is per backend and per torch build (CUDA autocast casts the ops of ATen's AT_FORALL_FP32
# list, aten/src/ATen/autocast_mode.h, layer_norm and native_layer_norm among them, to float32; CPU
# autocast registers its own shorter float32 list without them, so a bfloat16 input stays bfloat16;
# other backends register theirs). The probe runs under the caller's autocast, once per key.
_LAYER_NORM_IN_FLOAT32: dict = {}


def _autocast_layer_norm_in_float32(t: torch.Tensor, autocast_dtype: torch.dtype) -> bool:
    """Whether the active autocast on ``t``'s device runs layer_norm in float32. Call under that autocast."""
    key = (t.device.type, autocast_dtype)
    if key not in _LAYER_NORM_IN_FLOAT32:
        with torch.no_grad():
            probe = torch.ones(1, 2, dtype=autocast_dtype, device=t.device)
            _LAYER_NORM_IN_FLOAT32[key] = F.layer_norm(probe, (2,)).dtype == torch.float32
    return _LAYER_NORM_IN_FLOAT32[key]


def _cast(t: Optional[torch.Tensor], dtype: Optional[torch.dtype]) -> Optional[torch.Tensor]:
    return t if t is None or dtype is None else t.to(dtype)


def _linear_grads(grad_out, inputs, has_bias):
    """Weight and bias gradients of ``linear(inputs, weight, bias)``, in the dtype of ``grad_out``."""
    grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
    grad_weight = grad_2d.t() @ inputs.reshape(-1, inputs.shape[-1])
    return grad_weight, (grad_2d.sum(0) if has_bias else None)


class _LayerNormLinear(torch.autograd.Function):
    """``linear(layer_norm(x))`` that keeps x, mean and rstd for backward instead of the normalised
    map: the normalised map (as wide as x) is recomputed in backward. Saves one activation of
    the block's width per LayerNorm -> Linear pair (norm1 -> qkv, norm2 -> fc1) in training."""

    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, weight, bias, eps, linear_dtype, norm_in_float32):
        channels = x.shape[-1]
        with torch.autocast(x.device.type, enabled=False):
            norm_in = x.float() if norm_in_float32 else x
            # CPU bfloat16: the compiled kernel's LayerNorm (dinat_backbone.fused_norm says why),
            # forward and backward; elsewhere ATen's
            fused = cpu_layer_norm(norm_in, ln_weight, ln_bias, eps) if fused_norm_enabled() else None
            if fused is None:
                normed, mean, rstd = torch.native_layer_norm(norm_in, (channels,), ln_weight, ln_bias, eps)
            else:
                normed, _, mean, rstd = fused
            linear_weight = _cast(weight, linear_dtype)
            out = linear_weights(_cast(normed, linear_dtype), linear_weight, _cast(bias, linear_dtype))
        # the weight as the GEMM used it (autocast's cast kept, not redone in backward: a weight-sized
        # bfloat16 copy per layer until backward)
        ctx.save_for_backward(x, mean, rstd, ln_weight, ln_bias, linear_weight)
        ctx.weight_dtype = weight.dtype
        ctx.has_bias = bias is not None
        ctx.eps = eps
        ctx.linear_dtype = linear_dtype
        ctx.norm_in_float32 = norm_in_float32
        ctx.kernel_norm = fused is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, mean, rstd, ln_weight, ln_bias, linear_weight = ctx.saved_tensors
        dt = ctx.linear_dtype
        channels = x.shape[-1]
        with torch.autocast(x.device.type, enabled=False):
            norm_in = x.float() if ctx.norm_in_float32 else x
            # the forward's kernel again: the forward's normalised map bit for bit, in one pass over x
            # in its own dtype (not x - mean, * rstd, addcmul in the statistics' float32 and a cast)
            if ctx.kernel_norm:
                normed = cpu_layer_norm(norm_in, ln_weight, ln_bias, ctx.eps)[0]
            else:
                normed = torch.native_layer_norm(norm_in, (channels,), ln_weight, ln_bias, ctx.eps)[0]
            grad_weight, grad_bias = _linear_grads(grad_out, _cast(normed, dt), ctx.has_bias)
            grad_normed = (grad_out @ linear_weight).to(normed.dtype)
            mask = ctx.needs_input_grad[:3]
            if ctx.kernel_norm:
                # grad_normed is this function's own fresh tensor: grad_x may overwrite it
                grad_x, grad_ln_weight, grad_ln_bias = cpu_layer_norm_backward(
                    grad_normed, norm_in, mean, rstd, ln_weight, mask, overwrite_grad=True)
            else:
                grad_x, grad_ln_weight, grad_ln_bias = torch.ops.aten.native_layer_norm_backward(
                    grad_normed, norm_in, (channels,), mean, rstd, ln_weight, ln_bias, list(mask))
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        grad_weight = grad_weight.to(ctx.weight_dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(ctx.weight_dtype)
        return grad_x, grad_ln_weight, grad_ln_bias, grad_weight, grad_bias, None, None, None


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h))`` that keeps only h for backward and recomputes the GELU there."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, linear_dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            act = F.gelu(hidden)
            linear_weight = _cast(weight, linear_dtype)
            out = linear_weights(_cast(act, linear_dtype), linear_weight, _cast(bias, linear_dtype))
        ctx.save_for_backward(hidden, linear_weight)  # as in _LayerNormLinear
        ctx.weight_dtype = weight.dtype
        ctx.linear_dtype = linear_dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        hidden, linear_weight = ctx.saved_tensors
        dt = ctx.linear_dtype
        with torch.autocast(hidden.device.type, enabled=False):
            grad_act = (grad_out @ linear_weight).to(hidden.dtype)
            # bfloat16 on CPU: gelu(hidden) again and the GELU gradient in one pass of the compiled
            # kernel (one erfc and exp per element, not ATen's gelu then gelu_backward, each with its
            # erf), the gradient written over grad_act (this function's own fresh tensor)
            fused = cpu_gelu_backward(grad_act, hidden, overwrite_grad=True)
            if fused is None:
                act, grad_hidden = F.gelu(hidden), torch.ops.aten.gelu_backward(grad_act, hidden)
            else:
                act, grad_hidden = fused
            grad_weight, grad_bias = _linear_grads(grad_out, _cast(act, dt), True)
        return grad_hidden, grad_weight.to(ctx.weight_dtype), grad_bias.to(ctx.weight_dtype), None


def layer_norm_linear(x: torch.Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> torch.Tensor:
    """``linear(norm(x))`` without keeping ``norm(x)`` for backward (also under autocast)."""
    linear_dtype = _autocast_dtype(x)
    norm_in_float32 = linear_dtype is not None and _autocast_layer_norm_in_float32(x, linear_dtype)
    return _LayerNormLinear.apply(
        x, norm.weight, norm.bias, linear.weight, linear.bias, norm.eps, linear_dtype, norm_in_float32)


def gelu_linear(hidden: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear(gelu(hidden))`` (exact GELU) without keeping ``gelu(hidden)`` for backward (also under
    autocast). ``linear`` must have a bias."""
    return _GeluLinear.apply(hidden, linear.weight, linear.bias, _autocast_dtype(hidden))
