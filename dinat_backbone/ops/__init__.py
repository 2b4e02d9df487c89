"""Neighborhood attention (NA / dilated NA) with relative positional bias, for 2-D maps.

The functional op is :func:`na2d`, with NATTEN >= 0.20's heads-last layout
``[batch, X, Y, heads, head_dim]`` and NATTEN <= 0.17's semantics (relative positional bias, RPB,
``rpb`` of shape ``[heads, 2*K-1, 2*K-1]``), which every published DiNAT / NAT checkpoint was
trained with. :class:`NeighborhoodAttention2D` is the thin module on top. The window rule is in
:mod:`.geometry`.

Layout (as NATTEN's ``backends/`` and xformers' op classes): one file per backend, each defining a
``BACKEND`` (:class:`~.backend.Backend`) that declares its capabilities as data, and one ordered
table in :mod:`.dispatch`; :mod:`.backend` holds the call description, the declarations and the
one checker that turns them into reasons. Small-map padding is in :mod:`.padding`. The backends,
in automatic-selection order:

``export`` (:mod:`.export`)
    plain tensor ops, symbolic sizes; serves exactly the calls made inside :func:`export_mode`
    or while torch traces for export.
``triton`` (:mod:`.triton`)
    fused Triton kernels, forward and backward, on CUDA tensors (on CPU tensors only under
    ``TRITON_INTERPRET=1``, and then only when asked for by name).
``natten`` (:mod:`.natten`)
    ``natten.na2d`` (fused, NATTEN >= 0.20); CUDA only, only without rpb, and only where natten's
    own compatibility query finds a kernel.
``cpu`` (:mod:`.cpu`)
    the compiled C++ kernel (``dinat_backbone._C``), forward and backward; the default on CPU.
``torch`` (:mod:`.reference`)
    pure PyTorch with its own autograd, any device; the reference, and what serves the rest
    (attention dropout in training, machines without the compiled kernel).

``backend=`` or the ``DINAT_NA_BACKEND`` environment variable requests one; :func:`select_backend`
says which backend a call runs and why the ones before it were skipped.

:func:`natten2dqkrpb` / :func:`natten2dav` (:mod:`.split`) are the split form with NATTEN <= 0.17.4's
heads-first signatures, for callers that need the attention weights (HF transformers' DiNAT).
"""
from .backend import Backend, Call, Capabilities
from .cpu import kernel_available as cpu_kernel_available
from .dispatch import (BACKEND_ENV, BACKEND_ORDER, BACKENDS, BackendSelection, TensorSpec, available_backends, na2d,
                       na2d_padded, select_backend)
from .export import export_mode, exporting
from .geometry import neighborhood_indices, window_start
from .modules import NeighborhoodAttention2D
from .split import natten2dav, natten2dqkrpb

__all__ = [
    "na2d",
    "na2d_padded",
    "NeighborhoodAttention2D",
    "natten2dqkrpb",
    "natten2dav",
    "neighborhood_indices",
    "window_start",
    "select_backend",
    "available_backends",
    "cpu_kernel_available",
    "export_mode",
    "exporting",
    "BackendSelection",
    "Backend",
    "Call",
    "Capabilities",
    "TensorSpec",
    "BACKENDS",
    "BACKEND_ORDER",
    "BACKEND_ENV",
]
