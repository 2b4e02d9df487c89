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

__all__ = ["na2d_export", "axis_indices", "export_mode", "is_exporting"]


def is_exporting() -> bool:
    """True inside ``torch.onnx.export`` / ``torch.export`` tracing."""
    try:
        if torch.compiler.is_exporting():
            return True
    except Exception:  # pragma: no cover - older torch
        pass
    try:
        return bool(torch.onnx.is_in_onnx_export())
    except Exception:  # pragma: no cover
        return False


def axis_indices(length, kernel_size: int, dilation: int, device=None):
    """Per-axis neighbourhood ``keys[i, t]`` and RPB index ``rpb_idx[i, t]`` (both ``[L, K]``, int64).

    Same formulas as :func:`dinat_backbone.ops.neighborhood_indices`, but computed with tensor ops
    from ``length``, which may be a symbolic size (``SymInt``) during export: no Python branching
    on the size and no cache keyed on it.
    """
    K, d = int(kernel_size), int(dilation)
    i = torch.arange(length, device=device)
    r = torch.remainder(i, d)
    p = torch.div(i, d, rounding_mode="floor")
    class_len = torch.div(length - r + (d - 1), d, rounding_mode="floor")
    start = torch.minimum(torch.clamp(p - K // 2, min=0), class_len - K)
    t = torch.arange(K, device=device)
    keys = (start.unsqueeze(1) + t.unsqueeze(0)) * d + r.unsqueeze(1)
    rpb_idx = torch.div(keys - i.unsqueeze(1), d, rounding_mode="floor") + (K - 1)
    return keys, rpb_idx


def na2d_export(query, key, value, kernel_size: int, dilation: int = 1, rpb: Optional[torch.Tensor] = None,
                scale: Optional[float] = None, backend: Optional[str] = None) -> torch.Tensor:
    """``na2d`` with plain tensor ops only (forward; any device and dtype; shapes may be symbolic).

    Arguments as :func:`dinat_backbone.ops.na2d` (``backend`` is accepted and ignored). No input
    validation: the map must be at least ``kernel_size * dilation`` on each axis (the model pads).
    """
    B, X, Y, H, D = query.shape
    K = int(kernel_size)
    if scale is None:
        scale = D ** -0.5
    keys_y, rpb_y = axis_indices(X, K, dilation, query.device)
    keys_x, rpb_x = axis_indices(Y, K, dilation, query.device)
    flat_keys_x = keys_x.reshape(-1)
    q = query.unsqueeze(-2)  # [B, X, Y, H, 1, D]

    def gather_row(t, a):
        # [B, X, Y, H, K, D] with out[b, i, j, h, c] = t[b, keys_y[i, a], keys_x[j, c], h]
        rows = t.index_select(1, keys_y[:, a])
        g = rows.index_select(2, flat_keys_x).reshape(B, X, Y, K, H, D)
        return g.permute(0, 1, 2, 4, 3, 5)

    logits = torch.cat([torch.matmul(q, gather_row(key, a).transpose(-1, -2)) for a in range(K)], dim=-2)
    logits = logits * scale  # [B, X, Y, H, K, K]
    if rpb is not None:
        idx = rpb_y.unsqueeze(1).unsqueeze(3) * (2 * K - 1) + rpb_x.unsqueeze(0).unsqueeze(2)  # [X, Y, K, K]
        bias = rpb.reshape(H, (2 * K - 1) * (2 * K - 1)).to(logits.dtype)
        bias = bias.index_select(1, idx.reshape(-1)).reshape(H, X, Y, K, K).permute(1, 2, 0, 3, 4)
        logits = logits + bias
    attn = F.softmax(logits.reshape(B, X, Y, H, K * K), dim=-1).reshape(B, X, Y, H, K, K)
    out = None
    for a in range(K):
        part = torch.matmul(attn[..., a:a + 1, :], gather_row(value, a))  # [B, X, Y, H, 1, D]
        out = part if out is None else out + part
    return out.squeeze(-2)


def _block_attention_export(self, x: torch.Tensor) -> torch.Tensor:
    """Branch-free version of ``DiNATBlock._attention`` (``small_input='pad'``).

    The eager code tests ``H >= kernel_size * dilation`` in Python, which under ``torch.export``
    with a dynamic input size becomes a guard that pins the exported graph to one side of the
    test. Here the pad amounts are ``max(win - H, 0)`` as symbolic integers (``torch.sym_max``),
    so the same graph pads small maps and leaves large ones untouched, exactly as the eager model.
    """
    if getattr(self, "small_input", "pad") != "pad":
        return _ORIGINAL_BLOCK_ATTENTION(self, x)
    H, W = x.shape[1], x.shape[2]
    win = self.window_size
    pad_h = torch.sym_max(win - H, 0)
    pad_w = torch.sym_max(win - W, 0)
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return self.attn(x)[:, :H, :W]


_ORIGINAL_BLOCK_ATTENTION = None


@contextlib.contextmanager
def export_mode() -> Iterator[None]:
    """Make the package's models exportable while active (ONNX, ``torch.export``), restore on exit.

    * every ``na2d`` call goes to :func:`na2d_export`: the ``na2d`` name is replaced in
      :mod:`dinat_backbone.ops` (which ``NeighborhoodAttention2D`` calls) and in every imported
      ``dinat_backbone.*`` module that imported it by name;
    * ``DiNATBlock._attention`` (small-input padding) becomes branch-free, so one graph with a
      dynamic input size pads exactly the maps the eager model pads.

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
