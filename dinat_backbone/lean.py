"""Memory-lean training functions of the DiNAT block: ``linear(layer_norm(x))`` and
``linear(gelu(h))`` as autograd functions that keep the narrow inputs for backward and recompute
the wide intermediate there. Same values and gradients as the plain modules; they save one
activation of the block's width per LayerNorm -> Linear pair (norm1 -> qkv, norm2 -> fc1) and the
GELU output of the MLP (DiNAT-T training peak memory 1.16x -> 0.82x Swin-T when introduced).

Under autocast they compute what the plain modules compute there: LayerNorm in float32 (autocast's
float32 list), the Linear in the autocast dtype (operands cast to it, gradients cast back to the
parameters' dtype), GELU in its input's dtype. The autocast dtype is read once per call and passed
in; forward and backward run with autocast off and cast explicitly, so backward (which autocast
does not reach) computes in the dtypes the forward used.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["layer_norm_linear", "gelu_linear"]


def _autocast_dtype(t: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast runs a Linear in on ``t``'s device, or None outside autocast."""
    device_type = t.device.type
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _cast(t: Optional[torch.Tensor], dtype: Optional[torch.dtype]) -> Optional[torch.Tensor]:
    return t if t is None or dtype is None else t.to(dtype)


def _linear_grads(grad_out, inputs, weight, has_bias):
    """Weight and bias gradients of ``linear(inputs, weight, bias)``, in the dtype of ``grad_out``."""
    grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
    grad_weight = grad_2d.t() @ inputs.reshape(-1, inputs.shape[-1])
    return grad_weight, (grad_2d.sum(0) if has_bias else None)


class _LayerNormLinear(torch.autograd.Function):
    """``linear(layer_norm(x))`` that keeps x, mean and rstd for backward instead of the normalised
    map: the normalised map (as wide as x) is recomputed in backward. Saves one activation of
    the block's width per LayerNorm -> Linear pair (norm1 -> qkv, norm2 -> fc1) in training."""

    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, weight, bias, eps, linear_dtype):
        channels = x.shape[-1]
        with torch.autocast(x.device.type, enabled=False):
            norm_in = x.float() if linear_dtype is not None else x  # autocast: layer norm in float32
            normed, mean, rstd = torch.native_layer_norm(norm_in, (channels,), ln_weight, ln_bias, eps)
            out = F.linear(_cast(normed, linear_dtype), _cast(weight, linear_dtype), _cast(bias, linear_dtype))
        ctx.save_for_backward(x, mean, rstd, ln_weight, ln_bias, weight)
        ctx.has_bias = bias is not None
        ctx.linear_dtype = linear_dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, mean, rstd, ln_weight, ln_bias, weight = ctx.saved_tensors
        dt = ctx.linear_dtype
        channels = x.shape[-1]
        with torch.autocast(x.device.type, enabled=False):
            norm_in = x.float() if dt is not None else x
            normed = torch.addcmul(ln_bias, (norm_in - mean) * rstd, ln_weight)
            grad_weight, grad_bias = _linear_grads(grad_out, _cast(normed, dt), weight, ctx.has_bias)
            grad_normed = (grad_out @ _cast(weight, dt)).to(normed.dtype)
            grad_x, grad_ln_weight, grad_ln_bias = torch.ops.aten.native_layer_norm_backward(
                grad_normed, norm_in, (channels,), mean, rstd, ln_weight, ln_bias, list(ctx.needs_input_grad[:3]))
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        grad_weight = grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(weight.dtype)
        return grad_x, grad_ln_weight, grad_ln_bias, grad_weight, grad_bias, None, None


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h))`` that keeps only h for backward and recomputes the GELU there."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, linear_dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            act = F.gelu(hidden)
            out = F.linear(_cast(act, linear_dtype), _cast(weight, linear_dtype), _cast(bias, linear_dtype))
        ctx.save_for_backward(hidden, weight)
        ctx.linear_dtype = linear_dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        hidden, weight = ctx.saved_tensors
        dt = ctx.linear_dtype
        with torch.autocast(hidden.device.type, enabled=False):
            act = F.gelu(hidden)
            grad_weight, grad_bias = _linear_grads(grad_out, _cast(act, dt), weight, True)
            grad_act = (grad_out @ _cast(weight, dt)).to(hidden.dtype)
            grad_hidden = torch.ops.aten.gelu_backward(grad_act, hidden)
        return grad_hidden, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None


def layer_norm_linear(x: torch.Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> torch.Tensor:
    """``linear(norm(x))`` without keeping ``norm(x)`` for backward (also under autocast)."""
    return _LayerNormLinear.apply(x, norm.weight, norm.bias, linear.weight, linear.bias, norm.eps, _autocast_dtype(x))


def gelu_linear(hidden: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear(gelu(hidden))`` (exact GELU) without keeping ``gelu(hidden)`` for backward (also under
    autocast). ``linear`` must have a bias."""
    return _GeluLinear.apply(hidden, linear.weight, linear.bias, _autocast_dtype(hidden))
