"""Backend ``torch``: neighbourhood attention in pure PyTorch, with its own autograd.

Runs on any device and dtype; the reference every other backend is tested against, and what runs
where no faster backend can (no compiled kernel, attention dropout in training). Memory is
O(N * K^2): it never forms an N x N matrix and keeps no gathered copies of K / V for backward (it
saves q, k, v and the attention weights; gathered neighbours are produced one kernel row at a time).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import Backend, Call, Capabilities
from .geometry import neighborhood_indices
from .inputs import compute_dtype

NAME = "torch"
__all__ = ["NAME", "BACKEND", "run", "attention_weights_forward", "differentiable_grads"]


#: any device and dtype, backward and attention dropout; not while exporting (an autograd.Function
#: and a size-keyed index cache cannot go into an exported graph)
CAPABILITIES = Capabilities(dropout=True)


def _gather_row(x, keys_y, keys_x, a):
    """Neighbours in row offset ``a``: ``[B, X, Y, K, H, D]``,
    ``out[b, i, j, t] = x[b, keys_y[i, a], keys_x[j, t]]``."""
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


def _logits(q, k, rpb, kernel_size, dilation, scale):
    _, X, Y, _, _ = q.shape
    keys_y, rpb_y = neighborhood_indices(X, kernel_size, dilation, q.device)
    keys_x, rpb_x = neighborhood_indices(Y, kernel_size, dilation, q.device)
    logits = _qk(q, k, keys_y, keys_x) * scale
    if rpb is not None:
        logits = logits + _rpb_bias(rpb.to(logits.dtype), rpb_y, rpb_x, kernel_size)
    return logits, (keys_y, keys_x, rpb_y, rpb_x)


def _softmax_k2(logits):
    # flatten, not reshape(..., -1): -1 is ambiguous for an empty batch
    return torch.softmax(logits.flatten(-2), dim=-1).reshape(logits.shape)


class _NA2DFunction(torch.autograd.Function):
    """Pure-PyTorch neighbourhood attention with a hand-written backward (saves q, k, v and the
    attention weights)."""

    @staticmethod
    def forward(ctx, q, k, v, rpb, kernel_size, dilation, scale):
        q_in, k_in, v_in = q, k, v
        in_dtype = q.dtype
        cdt = compute_dtype(in_dtype)
        q, k, v = q.to(cdt), k.to(cdt), v.to(cdt)
        logits, idx = _logits(q, k, rpb, kernel_size, dilation, scale)
        attn = _softmax_k2(logits)
        out = _av(attn, v, idx[0], idx[1])
        # and the inputs as given (the same tensors in float32 / float64), for a double backward
        ctx.save_for_backward(q, k, v, attn, q_in, k_in, v_in, rpb)
        ctx.dilation = dilation
        ctx.idx = idx
        ctx.meta = (kernel_size, scale, in_dtype, None if rpb is None else rpb.dtype)
        return out.to(in_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
            return (*differentiable_grads(grad_out, ctx.saved_tensors[4:], ctx.meta[0], ctx.dilation, ctx.meta[1],
                                          ctx.needs_input_grad[:4]), None, None, None)
        q, k, v, attn = ctx.saved_tensors[:4]
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


def attention_weights_forward(query, key, value, kernel_size, dilation, rpb, scale, attn_drop: float = 0.0):
    """Forward with plain autograd through the weights, so that dropout can act on them."""
    cdt = compute_dtype(query.dtype)
    q, k, v = query.to(cdt), key.to(cdt), value.to(cdt)
    logits, idx = _logits(q, k, rpb, kernel_size, dilation, scale)
    attn = _softmax_k2(logits)
    if attn_drop > 0.0:
        attn = F.dropout(attn, p=attn_drop, training=True)
    return _av(attn, v, idx[0], idx[1]).to(query.dtype)


def differentiable_grads(grad_out, inputs, kernel_size, dilation, scale, needs_input_grad):
    """dq, dk, dv, drpb (None where not needed) of na2d at ``inputs`` = (q, k, v, rpb) for ``grad_out``,
    through plain differentiable ops, so that the gradients have a graph themselves: what every
    backend's backward computes when ``create_graph=True`` (a Hessian, a gradient penalty). The fused
    backwards are not differentiable; this recomputes the forward once, O(N * K^2) memory."""
    wanted = [i for i, (t, need) in enumerate(zip(inputs, needs_input_grad)) if need and t is not None]
    grads = [None] * 4
    if not wanted:
        return grads
    with torch.enable_grad():
        q, k, v, rpb = inputs
        out = attention_weights_forward(q, k, v, kernel_size, dilation, rpb, scale)
        found = torch.autograd.grad(out, [inputs[i] for i in wanted], grad_out, create_graph=True)
    for i, g in zip(wanted, found):
        grads[i] = g
    return grads


def run(query, key, value, rpb, scale, call: Call):
    """``call.attn_dropout > 0`` (dropout on the attention weights, training only) uses plain autograd;
    otherwise the memory-lean autograd function."""
    if call.attn_dropout > 0.0:
        return attention_weights_forward(query, key, value, call.kernel_size, call.dilation, rpb, scale,
                                         call.attn_dropout)
    return _NA2DFunction.apply(query, key, value, rpb, call.kernel_size, call.dilation, float(scale))


BACKEND = Backend(NAME, CAPABILITIES, run)
