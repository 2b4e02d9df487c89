"""Export-friendly neighbourhood attention (ONNX / ``torch.export``).

The default CPU path of :func:`dinat_backbone.ops.na2d` is a compiled kernel registered as a
custom op (``torch.ops.dinat.*``); the pure-PyTorch path is an ``autograd.Function`` whose
neighbourhood indices are cached per *concrete* map size. Neither can go into an ONNX file
without custom operators, and neither can follow a symbolic (dynamic) input size.

:func:`na2d_export` is the same computation written with plain, decomposable tensor ops only
(``arange``/integer arithmetic for the indices, ``index_select`` gathers, matmul, softmax), with
the neighbourhood indices computed *from the map size inside the graph*, so one exported graph
serves every input size. It is slower than the kernel and keeps ``K`` gathered rows of K/V at a
time (forward only, no autograd bookkeeping), which is fine for inference runtimes.

:func:`export_mode` is a context manager that routes every ``na2d`` call of the package to
:func:`na2d_export` while it is active::

    from dinat_backbone.export import export_mode
    with export_mode():
        onnx_program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=...)

``tools/export_onnx.py`` is the command-line front end.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

__all__ = ["na2d_export", "axis_indices", "export_mode"]


def axis_indices(length, kernel_size: int, dilation: int, device=None, min_length: int = 0):
    """Per-axis neighbourhood ``keys[i, t]`` and RPB index ``rpb_idx[i, t]`` (both ``[L, K]``, int64).

    Same formulas as :func:`dinat_backbone.ops.neighborhood_indices`, but computed with tensor ops
    from ``length``, which may be a symbolic size (``SymInt``) during export: no Python branching
    on the size and no cache keyed on it.

    ``min_length``: the neighbourhoods are those of a map of length ``max(length, min_length)``
    (the model's small-input zero padding), for the ``length`` real queries; keys that fall in
    the padding are ``>= length``. The padded length is a *value* in the graph, not a shape, so
    one graph serves maps that need padding and maps that do not.
    """
    K, d = int(kernel_size), int(dilation)
    i = torch.arange(length, device=device)
    n = i[-1:] + 1  # the length as a 1-element tensor (works for symbolic lengths)
    if min_length:
        n = torch.clamp(n, min=int(min_length))
    r = torch.remainder(i, d)
    p = torch.div(i, d, rounding_mode="floor")
    class_len = torch.div(n - r + (d - 1), d, rounding_mode="floor")
    start = torch.minimum(torch.clamp(p - K // 2, min=0), class_len - K)
    t = torch.arange(K, device=device)
    keys = (start.unsqueeze(1) + t.unsqueeze(0)) * d + r.unsqueeze(1)
    rpb_idx = torch.div(keys - i.unsqueeze(1), d, rounding_mode="floor") + (K - 1)
    return keys, rpb_idx


def na2d_export(query, key, value, kernel_size: int, dilation: int = 1, rpb: Optional[torch.Tensor] = None,
                scale: Optional[float] = None, backend: Optional[str] = None, pad_key: Optional[torch.Tensor] = None,
                pad_value: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``na2d`` with plain tensor ops only (forward; any device and dtype; shapes may be symbolic).

    Arguments as :func:`dinat_backbone.ops.na2d` (``backend`` is accepted and ignored). No input
    validation: the map must be at least ``kernel_size * dilation`` on each axis, unless
    ``pad_key`` and ``pad_value`` (``[heads, head_dim]``) are given: then a smaller map is treated
    as zero-padded on the right / bottom to ``kernel_size * dilation``, every padding token having
    that key and value (a zero input token after the qkv projection is its bias), which is what
    ``DiNAT(small_input='pad')`` computes, without padding the query map.
    """
    B, X, Y, H, D = query.shape
    K = int(kernel_size)
    if scale is None:
        scale = D ** -0.5
    padded = pad_key is not None and pad_value is not None
    win = K * int(dilation) if padded else 0
    keys_y, rpb_y = axis_indices(X, K, dilation, query.device, win)
    keys_x, rpb_x = axis_indices(Y, K, dilation, query.device, win)
    if padded:
        # one extra row and column holding the padding token; out-of-map keys point at it
        def extend(t, pad):
            pad = pad.to(t.dtype).reshape(1, 1, 1, H, D)
            t = torch.cat([t, pad.expand(B, 1, Y, H, D)], dim=1)
            return torch.cat([t, pad.expand(B, X + 1, 1, H, D)], dim=2)

        key, value = extend(key, pad_key), extend(value, pad_value)
        keys_y = torch.clamp(keys_y, max=X) if isinstance(X, int) else torch.minimum(keys_y, keys_y.new_full((), 0) + X)
        keys_x = torch.clamp(keys_x, max=Y) if isinstance(Y, int) else torch.minimum(keys_x, keys_x.new_full((), 0) + Y)
    # No reshape that splits a symbolic dimension (torch.export cannot prove the divisibility
    # guards such splits emit, e.g. inside a broadcasting matmul): 2-D gathers and
    # multiply-and-reduce instead.
    q = query.unsqueeze(3)  # [B, X, Y, 1, H, D]

    def gather_row(t, a):
        # [B, X, Y, K, H, D] with out[b, i, j, c, h] = t[b, keys_y[i, a], keys_x[j, c], h]
        return t.index_select(1, keys_y[:, a])[:, :, keys_x]

    logits = torch.stack([(q * gather_row(key, a)).sum(-1) for a in range(K)], dim=3)  # [B, X, Y, K(a), K(c), H]
    logits = logits * scale
    if rpb is not None:
        idx = rpb_y.unsqueeze(1).unsqueeze(3) * (2 * K - 1) + rpb_x.unsqueeze(0).unsqueeze(2)  # [X, Y, K, K]
        bias = rpb.reshape(H, (2 * K - 1) * (2 * K - 1)).to(logits.dtype).t()[idx]  # [X, Y, K, K, H]
        logits = logits + bias
    attn = F.softmax(logits.flatten(3, 4), dim=3).unflatten(3, (K, K))
    out = None
    for a in range(K):
        part = (attn[:, :, :, a].unsqueeze(-1) * gather_row(value, a)).sum(3)  # [B, X, Y, H, D]
        out = part if out is None else out + part
    return out


def _block_attention_export(self, x: torch.Tensor) -> torch.Tensor:
    """Export version of ``DiNATBlock._attention`` (``small_input='pad'``), free of size branches.

    The eager code tests ``H >= kernel_size * dilation`` in Python and pads the map, which under
    ``torch.export`` with a dynamic input size becomes guards that pin the graph to one side of
    the test. Here the padding is folded into the attention (:func:`na2d_export` with the padding
    token's key and value, i.e. the qkv bias), so one graph computes exactly what the eager model
    computes for maps that need padding and for maps that do not.
    """
    if getattr(self, "small_input", "pad") != "pad":
        return _ORIGINAL_BLOCK_ATTENTION(self, x)
    attn = self.attn
    B, H, W, C = x.shape
    qkv = attn.qkv(x)
    q, k, v = qkv.reshape(B, H, W, 3, attn.num_heads, attn.head_dim).unbind(3)
    if attn.qkv.bias is not None:
        pad = attn.qkv.bias.reshape(3, attn.num_heads, attn.head_dim).to(qkv.dtype)
    else:
        pad = qkv.new_zeros(3, attn.num_heads, attn.head_dim)
    out = na2d_export(q, k, v, attn.kernel_size, attn.dilation, attn.rpb, attn.scale, pad_key=pad[1], pad_value=pad[2])
    return attn.proj_drop(attn.proj(out.reshape(B, H, W, C)))


_ORIGINAL_BLOCK_ATTENTION = None


@contextlib.contextmanager
def export_mode() -> Iterator[None]:
    """Make the package's models exportable while active (ONNX, ``torch.export``), restore on exit.

    * every ``na2d`` call goes to :func:`na2d_export`: the ``na2d`` name is replaced in
      :mod:`dinat_backbone.ops` (which ``NeighborhoodAttention2D`` calls) and in every imported
      ``dinat_backbone.*`` module that imported it by name;
    * ``DiNATBlock._attention`` (small-input padding) becomes branch-free, so one graph with a
      dynamic input size computes what the eager model computes for small and large maps.

    Use it with the model in eval mode (attention dropout is ignored).
    """
    global _ORIGINAL_BLOCK_ATTENTION
    from . import ops

    original = ops.na2d
    patched = []
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "dinat_backbone" or name.startswith("dinat_backbone.")):
            continue
        if getattr(mod, "na2d", None) is original:
            patched.append(mod)
    block_cls = None
    try:
        from .dinat import DiNATBlock as block_cls  # noqa: N813
    except Exception:  # the model module is optional for exporting a bare attention module
        block_cls = None
    try:
        for mod in patched:
            mod.na2d = na2d_export
        if block_cls is not None and hasattr(block_cls, "_attention"):
            _ORIGINAL_BLOCK_ATTENTION = block_cls.__dict__["_attention"]
            block_cls._attention = _block_attention_export
        yield
    finally:
        for mod in patched:
            mod.na2d = original
        if block_cls is not None and _ORIGINAL_BLOCK_ATTENTION is not None:
            block_cls._attention = _ORIGINAL_BLOCK_ATTENTION
            _ORIGINAL_BLOCK_ATTENTION = None
