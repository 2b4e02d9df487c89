"""Memory-lean training functions of the DiNAT block: ``linear(layer_norm(x))`` and
``linear(gelu(h))`` as autograd functions that keep the narrow inputs for backward and recompute
the wide intermediate there. Same values and gradients as the plain modules; they save one
activation of the block's width per LayerNorm -> Linear pair (norm1 -> qkv, norm2 -> fc1) and the
GELU output of the MLP (DiNAT-T training peak memory 1.16x -> 0.82x Swin-T when introduced).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["layer_norm_linear", "gelu_linear"]


class _LayerNormLinear(torch.autograd.Function):
    """``linear(layer_norm(x))`` that keeps x, mean and rstd for backward instead of the normalised
    map: the normalised map (as wide as x) is recomputed in backward. Saves one activation of
    the block's width per LayerNorm -> Linear pair (norm1 -> qkv, norm2 -> fc1) in training."""

    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, weight, bias, eps):
        channels = x.shape[-1]
        normed, mean, rstd = torch.native_layer_norm(x, (channels,), ln_weight, ln_bias, eps)
        ctx.save_for_backward(x, mean, rstd, ln_weight, ln_bias, weight)
        ctx.has_bias = bias is not None
        return F.linear(normed, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, mean, rstd, ln_weight, ln_bias, weight = ctx.saved_tensors
        channels = x.shape[-1]
        normed = torch.addcmul(ln_bias, (x - mean) * rstd, ln_weight)
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_weight = grad_2d.t() @ normed.reshape(-1, channels)
        grad_bias = grad_2d.sum(0) if ctx.has_bias else None
        grad_normed = grad_out @ weight
        grad_x, grad_ln_weight, grad_ln_bias = torch.ops.aten.native_layer_norm_backward(
            grad_normed, x, (channels,), mean, rstd, ln_weight, ln_bias, list(ctx.needs_input_grad[:3]))
        return grad_x, grad_ln_weight, grad_ln_bias, grad_weight, grad_bias, None


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h))`` that keeps only h for backward and recomputes the GELU there."""

    @staticmethod
    def forward(ctx, hidden, weight, bias):
        ctx.save_for_backward(hidden, weight)
        return F.linear(F.gelu(hidden), weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        hidden, weight = ctx.saved_tensors
        act = F.gelu(hidden)
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_weight = grad_2d.t() @ act.reshape(-1, act.shape[-1])
        grad_bias = grad_2d.sum(0)
        grad_hidden = torch.ops.aten.gelu_backward(grad_out @ weight, hidden)
        return grad_hidden, grad_weight, grad_bias


def layer_norm_linear(x: torch.Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> torch.Tensor:
    """``linear(norm(x))`` without keeping ``norm(x)`` for backward."""
    return _LayerNormLinear.apply(x, norm.weight, norm.bias, linear.weight, linear.bias, norm.eps)


def gelu_linear(hidden: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear(gelu(hidden))`` (exact GELU) without keeping ``gelu(hidden)`` for backward."""
    return _GeluLinear.apply(hidden, linear.weight, linear.bias)
