"""The backend table and the functional op :func:`na2d`.

One ordered table decides which backend runs a call: the dispatcher describes the call once
(:class:`~dinat_backbone.ops.backend.Call`: the map that will run, padded where the call pads,
dtype, device, rpb, kernel size, dilation, gradient, dropout, exporting), and each backend's
declared capabilities (:mod:`.backend`) say why it cannot serve it. Automatic selection runs the
first backend in :data:`BACKEND_ORDER` with no reasons; an explicit request (``backend=`` or
``DINAT_NA_BACKEND``) that cannot be served raises with that backend's reasons and the backends
that could serve the call. What is selected is what runs: no backend hands a call to another, and
no backend validates again. :func:`select_backend` says what a call would run and why the faster
backends were skipped; the same is logged at DEBUG level for every call.
"""
from __future__ import annotations

import logging
import os
from typing import List, NamedTuple, Optional, Tuple

import torch

from . import cpu, export, natten, reference, triton
from .backend import Backend, Call
from .inputs import check_inputs
from .padding import pad_map, padded_size

__all__ = ["na2d", "na2d_padded", "select_backend", "available_backends", "BackendSelection", "TensorSpec",
           "BACKENDS", "BACKEND_ORDER", "BACKEND_ENV"]

logger = logging.getLogger("dinat_backbone.ops")

#: The backend table in automatic-selection order, fastest first (one entry per backend file).
#: ``export`` serves exactly the calls made while exporting (every other backend refuses those);
#: ``torch`` serves everything else.
BACKEND_ORDER: Tuple[Backend, ...] = (export.BACKEND, triton.BACKEND, natten.BACKEND, cpu.BACKEND, reference.BACKEND)
_TABLE = {b.name: b for b in BACKEND_ORDER}
BACKENDS = tuple(_TABLE)
BACKEND_ENV = "DINAT_NA_BACKEND"


class TensorSpec(NamedTuple):
    """What a call description reads of a tensor, for asking about calls without tensors."""
    shape: Tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool = False


class BackendSelection(NamedTuple):
    name: str
    #: the backends before it in the order (automatic mode) with the reasons they were skipped
    skipped: Tuple[Tuple[str, Tuple[str, ...]], ...]


def _requested(backend: Optional[str]) -> Optional[str]:
    requested = backend or os.environ.get(BACKEND_ENV) or None
    if requested is None:
        return None
    requested = requested.lower()
    if requested not in _TABLE:
        raise ValueError(f"na2d: unknown backend {requested!r}; choose one of {BACKENDS} (or None for automatic)")
    return requested


def _select(call: Call, backend: Optional[str]) -> BackendSelection:
    requested = _requested(backend)
    if requested is not None:
        why = _TABLE[requested].reasons(call)
        if why:
            others = [b.name for b in BACKEND_ORDER if not b.reasons(call)]
            source = f"backend={backend!r}" if backend else f"{BACKEND_ENV}={requested!r}"
            raise ValueError(
                f"na2d: {source} cannot serve this call: {'; '.join(why)}. Backends that can: {others} "
                "(or backend=None to choose automatically)")
        return BackendSelection(requested, ())
    skipped = []
    for b in BACKEND_ORDER:
        why = b.reasons(call, automatic=True)
        if not why:
            if b.name == reference.NAME and call.device.type == "cpu" and not cpu.kernel_available():
                cpu.warn_missing_kernel_once()
            return BackendSelection(b.name, tuple(skipped))
        skipped.append((b.name, tuple(why)))
    raise RuntimeError(f"na2d: no backend can serve this call: {dict(skipped)}")  # pragma: no cover


def select_backend(query, rpb=None, kernel_size: int = 7, dilation: int = 1, *, needs_grad: Optional[bool] = None,
                   attn_dropout: float = 0.0, backend: Optional[str] = None) -> BackendSelection:
    """The backend :func:`na2d` runs for a call with these arguments (``query`` and ``rpb``: tensors
    or :class:`TensorSpec`). ``needs_grad`` defaults to what the tensors say under the current grad
    mode. Raises ValueError for an explicit request that cannot serve the call."""
    call = Call.describe(query, rpb, kernel_size, dilation, needs_grad=needs_grad, attn_dropout=attn_dropout,
                         exporting=export.exporting())
    return _select(call, backend)


def available_backends(device="cpu", with_rpb: bool = True, dtype: torch.dtype = torch.float32,
                       needs_grad: bool = True, kernel_size: int = 7) -> List[str]:
    """Backends that can serve a call on ``device`` (with or without rpb), in selection order
    (outside export mode)."""
    call = Call((1, kernel_size, kernel_size, 1, 32), dtype, torch.device(device), kernel_size, 1,
                has_rpb=with_rpb, needs_grad=needs_grad, exporting=export.exporting())
    return [b.name for b in BACKEND_ORDER if not b.reasons(call, automatic=True)]


def _log(selection: BackendSelection, call: Call):
    if not torch.compiler.is_compiling() and logger.isEnabledFor(logging.DEBUG):
        skipped = "; ".join(f"{name}: {', '.join(why)}" for name, why in selection.skipped) or "none"
        logger.debug("na2d: ran %s for shape=%s K=%d d=%d rpb=%s (skipped: %s)", selection.name,
                     call.shape, call.kernel_size, call.dilation, call.has_rpb, skipped)


def _na2d(query, key, value, kernel_size, dilation, rpb, scale, backend, attn_drop, pad_tokens):
    check_inputs(query, key, value, kernel_size, dilation, rpb, check_size=pad_tokens is None)
    if not 0.0 <= attn_drop < 1.0:
        raise ValueError(f"na2d: attn_drop must be in [0, 1), got {attn_drop}")
    if scale is None:
        scale = query.shape[-1] ** -0.5
    B, X, Y, H, D = query.shape
    exporting = export.exporting()
    rows, cols = X, Y
    if pad_tokens is not None and not exporting:
        rows, cols = padded_size(X, Y, kernel_size, dilation)
        if (rows, cols) == (X, Y):
            pad_tokens = None
    # described as the map that runs: the padded one where this call pads. While exporting the
    # padding is folded into the graph by the export backend (the only one serving exporting calls),
    # with no branch on the (symbolic) map size.
    call = Call.describe(query, rpb, kernel_size, dilation, key=key, value=value, attn_dropout=attn_drop,
                         exporting=exporting, shape=(B, rows, cols, H, D), pad_tokens=pad_tokens)
    selection = _select(call, backend)
    _log(selection, call)
    chosen = _TABLE[selection.name]
    if pad_tokens is None or chosen.declared().folds_padding:
        return chosen.run(query, key, value, rpb, scale, call)
    q, k, v = (pad_map(t, token, rows, cols) for t, token in zip((query, key, value), pad_tokens))
    return chosen.run(q, k, v, rpb, scale, call)[:, :X, :Y]


def na2d(query, key, value, kernel_size: int, dilation: int = 1, rpb: Optional[torch.Tensor] = None,
         scale: Optional[float] = None, backend: Optional[str] = None, attn_drop: float = 0.0) -> torch.Tensor:
    """2-D (dilated) neighbourhood attention with optional relative positional bias.

    Args:
        query, key, value: ``[batch, X, Y, heads, head_dim]``.
        kernel_size: odd int >= 3. dilation: int >= 1. Each of X, Y must be >= kernel_size * dilation.
        rpb: ``[heads, 2*kernel_size-1, 2*kernel_size-1]`` or None.
        scale: multiplies q.k; default ``head_dim ** -0.5``.
        backend: None (the first backend of :data:`BACKEND_ORDER` that can serve the call), or one of
            :data:`BACKENDS`; see :func:`select_backend`.
        attn_drop: dropout probability on the attention weights (pass 0 outside training).

    Returns:
        ``[batch, X, Y, heads, head_dim]``, the dtype of the inputs.
    """
    return _na2d(query, key, value, kernel_size, dilation, rpb, scale, backend, attn_drop, None)


def na2d_padded(query, key, value, kernel_size: int, dilation: int, rpb, scale, backend, attn_drop: float,
                pad_tokens: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """:func:`na2d` on a map that is padded on the right / bottom to ``kernel_size * dilation``
    where it is smaller, with tokens whose query, key and value are ``pad_tokens`` (each
    ``[heads, head_dim]``; for a zero input token they are the qkv projection's bias), and cropped
    back. This is ``DiNAT(small_input='pad')``'s zero padding after ``norm1``, done on q / k / v.
    While exporting it is one branch-free graph for every map size."""
    return _na2d(query, key, value, kernel_size, dilation, rpb, scale, backend, attn_drop, pad_tokens)

