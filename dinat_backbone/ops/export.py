"""Backend ``export``: neighbourhood attention in plain, decomposable tensor ops (ONNX / ``torch.export``).

The ``cpu`` backend is a custom op and the ``torch`` backend an ``autograd.Function`` whose indices
are cached per *concrete* map size; neither can go into an ONNX file without custom operators, or
follow a symbolic (dynamic) input size. :func:`na2d_export` is the same computation with ``arange``
/ integer arithmetic for the indices (:func:`axis_indices`, computed from the map size inside the
graph), ``index_select`` gathers, multiply-and-reduce and softmax, so one exported graph serves
every input size. It keeps K gathered rows of K / V at a time; fine for inference runtimes.

Exporting is a context-local flag, not a patch: :func:`export_mode` sets it for the calling thread
(and context) only, and nests; the dispatcher sends every call made while it is set, or while
torch is tracing for export, to this backend, and the model's blocks read it (:func:`exporting`)
to fold their small-map padding into the graph.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from .backend import Backend, Call, Capabilities
from .geometry import axis_neighbourhood
from .padding import extend_with_token

NAME = "export"
__all__ = ["NAME", "BACKEND", "run", "export_mode", "exporting", "tracing_for_export", "axis_indices", "na2d_export"]

_EXPORT_MODE = contextvars.ContextVar("dinat_backbone_export_mode", default=False)


@contextlib.contextmanager
def export_mode() -> Iterator[None]:
    """While active (in this thread / context only), every ``na2d`` call runs the export backend and
    DiNAT blocks build branch-free graphs (the small-map padding folded into the attention), so
    one graph with a dynamic input size computes what the eager model computes for every size.
    Nests; use it with the model in eval mode::

        with export_mode():
            onnx_program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=...)
    """
    token = _EXPORT_MODE.set(True)
    try:
        yield
    finally:
        _EXPORT_MODE.reset(token)


def tracing_for_export() -> bool:
    """ONNX export, TorchScript tracing or ``torch.export`` in progress (they need decomposable ops)."""
    if torch.jit.is_tracing():
        return True
    try:
        if torch.onnx.is_in_onnx_export():
            return True
    except Exception:  # pragma: no cover - torch builds without onnx
        pass
    # the flag torch.export sets, read directly: torch 2.11's Dynamo folds torch.compiler.is_exporting()
    # to True under any torch.compile (which would send every compiled call to the export backend)
    compiler = getattr(torch, "compiler", None)
    if hasattr(compiler, "_is_exporting_flag"):
        return bool(compiler._is_exporting_flag)
    is_exporting = getattr(compiler, "is_exporting", None)
    return bool(is_exporting()) if is_exporting is not None else False


def exporting() -> bool:
    """True inside :func:`export_mode` or while torch traces for export."""
    if torch.compiler.is_compiling():
        # dynamo cannot trace a ContextVar read (graph break); under torch.compile only export
        # tracing (torch.export's strict mode) counts
        return tracing_for_export()
    return _EXPORT_MODE.get() or tracing_for_export()


#: any device and dtype; serves exactly the calls made while exporting, and folds small-map padding
CAPABILITIES = Capabilities(export="only", folds_padding=True)


def axis_indices(length, kernel_size: int, dilation: int, device=None, min_length: int = 0):
    """Per-axis neighbourhood ``keys[i, t]`` and RPB index ``rpb_idx[i, t]`` (both ``[L, K]``, int64),
    with the geometry's rule (:func:`dinat_backbone.ops.geometry.axis_neighbourhood`) applied to the
    length *as a tensor*, so ``length`` may be a symbolic size (``SymInt``) during export: no
    Python branching on the size and no cache keyed on it.

    ``min_length``: the neighbourhoods are those of a map of length ``max(length, min_length)``
    (the model's small-input zero padding), for the ``length`` real queries; keys that fall in
    the padding are ``>= length``. The padded length is a *value* in the graph, not a shape, so
    one graph serves maps that need padding and maps that do not.
    """
    i = torch.arange(length, device=device)
    n = i[-1:] + 1  # the length as a 1-element tensor (works for symbolic lengths)
    if min_length:
        n = torch.clamp(n, min=int(min_length))
    return axis_neighbourhood(i, n, int(kernel_size), int(dilation))


def na2d_export(query, key, value, kernel_size: int, dilation: int = 1, rpb: Optional[torch.Tensor] = None,
                scale: Optional[float] = None, pad_key: Optional[torch.Tensor] = None,
                pad_value: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``na2d`` with plain tensor ops only (forward; any device and dtype; shapes may be symbolic).

    No input validation (the dispatcher validates): the map must be at least
    ``kernel_size * dilation`` on each axis, unless ``pad_key`` and ``pad_value``
    (``[heads, head_dim]``) are given: then a smaller map is treated as padded on the right /
    bottom to ``kernel_size * dilation`` with tokens of that key and value (a zero input token
    after the qkv projection is its bias), which is what ``DiNAT(small_input='pad')`` computes,
    without padding the query map.
    """
    B, X, Y, H, D = query.shape
    K = int(kernel_size)
    if scale is None:
        scale = D ** -0.5
    padded = pad_key is not None and pad_value is not None
    win = K * int(dilation) if padded else 0
    keys_y, rpb_y = axis_indices(X, K, dilation, query.device, win)
    keys_x, rpb_x = axis_indices(Y, K, dilation, query.device, win)
    if padded:  # one extra row and column holding the padding token; out-of-map keys point at it
        key, value = extend_with_token(key, pad_key), extend_with_token(value, pad_value)
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


def run(query, key, value, rpb, scale, call: Call):
    pad_key = pad_value = None
    if call.pad_tokens is not None:
        _, pad_key, pad_value = call.pad_tokens
    return na2d_export(query, key, value, call.kernel_size, call.dilation, rpb, scale, pad_key=pad_key,
                       pad_value=pad_value)


BACKEND = Backend(NAME, CAPABILITIES, run)
