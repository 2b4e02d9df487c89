"""Fused Triton kernels for 2-D (dilated) neighbourhood attention with relative positional bias.

The ``triton`` backend of :func:`dinat_backbone.na2d`: forward and backward of the op described in
:mod:`dinat_backbone.ops` (NATTEN <= 0.17 semantics, heads-last ``[batch, X, Y, heads, head_dim]``),
for CUDA tensors, and for CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``), which
is how the tests run it on machines without a GPU.

The package: this module is the op (what it serves, the custom ops ``dinat::na2d_triton_forward`` /
``_backward`` with their fake and autograd registrations, so that ``torch.compile(fullgraph=True)``
traces through it), :mod:`._kernels` the ``@triton.jit`` code only, :mod:`._launch` the launches.
Importable with torch alone: triton is imported on the first call that could run here (a CUDA
tensor, or a CPU tensor under ``TRITON_INTERPRET=1``); its absence only makes the backend say so.

How the work is laid out
------------------------
* **Dilation by residue classes.** Dilated NA on an ``X x Y`` map is plain (dilation-1) NA on each
  of its ``d x d`` residue-class sub-maps (rows ``= rx``, columns ``= ry (mod d)``, sizes
  ``ceil((X - rx) / d) x ceil((Y - ry) / d)``), with the same RPB indices: the window-start rule
  ``clamp(p - K//2, 0, Lr - K)`` works in class coordinates. Every program picks one class and
  addresses it as a strided view of the original tensors (base ``+ rx*stride_x + ry*stride_y``,
  strides ``d * stride``): no permutation copy, any input strides.
* **Forward** (one program = one 2-D query tile of ``4 x 8`` class positions): the tile's keys are
  the union of its queries' windows, a box of at most ``(4 + K - 1) x (8 + K - 1)`` positions
  (shifted inward at the borders like the windows), loaded in ``4 x 8`` key tiles. Scores come from
  ``tl.dot``, the RPB is gathered from the ``[heads, 2K-1, 2K-1]`` table at ``(K-1) + key - query``,
  each pair is masked to its query's own window, and an online softmax accumulates the output; the
  log-sum-exp (log2 domain, float32, ``[B, heads, X, Y]``) is the only thing saved besides q, k, v
  and the output.
* **Backward**, FlashAttention-2 style, P recomputed from q, k and the saved log-sum-exp:
  ``dq_kernel`` (same query tiles and key boxes as the forward) computes ``delta = rowsum(dO * O)``,
  dQ and the RPB gradient; ``dkdv_kernel`` takes a ``4 x 8`` key tile, whose queries (those whose
  windows contain one of its keys) again form a box, from the inverse of the clamp rule, and
  accumulates dK and dV over ``4 x 8`` query tiles of that box. No atomics: dQ, dK, dV each have
  one writer, and each dQ program writes its own float32 partial RPB gradient ``[(2K-1)^2]``,
  summed afterwards in a fixed order (deterministic; NATTEN issue #97 was about half-precision
  atomics on exactly this gradient).
* **RPB gradient without scatters.** A score pair ``(query m, key n)`` adds its ``dS`` to the bin
  ``(K-1 + kx - qx, K-1 + ky - qy)``. With the query tile ``(mx, my)`` and key tile ``(nx, ny)``
  both 2-D, the x bin depends only on ``nx - mx`` and the y bin only on ``ny - my``, so after
  regrouping the ``[32, 32]`` dS tile as ``[(mx, nx), (my, ny)]`` (a reshape / permute in
  registers) the binned sum is ``A^T . dS . B`` with one-hot matrices ``A [(mx, nx), bin_x]`` and
  ``B [(my, ny), bin_y]``: two small tensor-core dots (the float32 dS is split into bfloat16
  parts, two for half inputs, three, i.e. all of float32, for float32 inputs; the one-hots are
  exact). Hence the tile products ``4 * 4`` and ``8 * 8`` must be >= 16 (tl.dot's minimum).
* **Tile sizes.** The score entries computed per query are ``keys in the box / K^2``, and the box
  grows with the tile, so the tiles are as small as ``tl.dot`` allows (every dimension >= 16,
  asserted at compile time): a ``4 x 8`` query tile's box at K = 7 is ``10 x 14``, six ``4 x 8``
  key tiles, 192 keys for 49 needed: 3.9x in the interior, less at the borders.
  ``tools/na_work.py``'s ``score_work_ratio`` gives the exact figure for a shape: 3.9x at 200x304
  d = 1, 3.2x at the DiNAT dilated COCO shapes (whose ``7..8 x 10..11`` class maps fill their
  tiles only partly), 2.2-5.1x for K = 5..13 (14x at K = 3,
  where 32-query tiles are large against 9 neighbours). Key tiles of 32 rather than 64 also keep
  the kernels within the register file (``tools/triton_compile_check.py`` prints the use).
* **No recompilation per image size.** Map sizes, heads, dilation and tile counts are runtime
  arguments excluded from Triton's integer specialisation (``do_not_specialize``); only the kernel
  size, the (padded) head dim, dtype, rpb on / off and the tiles are compile-time, plus the strides'
  divisibility by 16 (fixed by the model's channel count, not by the image). A COCO schedule (one
  kernel size, one head_dim, one dtype, rpb on) therefore compiles one forward, one dQ and one
  dK/dV kernel: 3 compilations for any number of image sizes, stages and dilations. DiNAT-T / S /
  B / L all use head_dim 32, so they share them; a float32 run adds 3, rpb-free calls 3, a frozen
  rpb (no rpb gradient) one dQ kernel. :func:`compiled_variant_count` counts them (the ``cuda``
  test and ``tools/gpu_check.sh`` check ten map sizes).
"""
import importlib.util
import math
import os
from types import MappingProxyType
from typing import List, Optional, Tuple

import torch

from ..backend import Backend, Call, Capabilities

__all__ = [
    "NAME",
    "BACKEND",
    "SUPPORTED_KERNEL_SIZES",
    "TILES",
    "available",
    "compiled_variant_count",
    "interpreting",
    "interpreter_requested",
    "na2d_triton",
    "num_warps",
    "run",
]

#: name in the backend table (``na2d(..., backend=NAME)``)
NAME = "triton"
SUPPORTED_KERNEL_SIZES = (3, 5, 7, 9, 11, 13)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: Tiles, in residue-class positions: ``tile_*`` is a program's own tile (queries for the forward
#: and dQ, keys for dK/dV), ``inner_*`` the tiles its box is loaded in. Every tl.dot dimension must
#: be >= 16 (the kernels assert it at compile time): 4 x 8 = 32 rows either way, and for the
#: RPB-gradient regrouping tile_x * inner_x = 16, tile_y * inner_y = 64. ``num_warps`` None: chosen
#: by :func:`num_warps`. Warps and stages are set from compiled register use, not yet from timings
#: on a GPU. Frozen: the kernels compile per tile choice, and the work accounting reads these.
TILES = MappingProxyType({
    kind: MappingProxyType({"tile_x": 4, "tile_y": 8, "inner_x": 4, "inner_y": 8, "num_warps": None,
                            "num_stages": 2})
    for kind in ("fwd", "dq", "dkdv")
})


def num_warps(kind: str, dtype: torch.dtype, head_dim: int) -> int:
    """Warps per program (``TILES[kind]['num_warps']`` when set). From the compiled register use for
    sm_90 (tools/triton_compile_check.py): with 32-row tiles, half-precision dots use one warp per 16
    rows, so 2 warps do all the work at head_dim <= 32 (4 would hold duplicate rows) and more warps
    only spread the head_dim-wide tiles; float32 (full-precision dots on CUDA cores) needs 8 to stay
    free of spills. The only spills left are the dQ kernel's at K = 13 or head_dim 128 (<= 120 B)."""
    if TILES[kind]["num_warps"]:
        return TILES[kind]["num_warps"]
    if dtype == torch.float32:
        return 8
    padded = max(16, 1 << max(0, head_dim - 1).bit_length())
    return 2 if padded <= 32 else (4 if padded <= 64 else 8)


def tile_counts(X: int, Y: int, dilation: int, tile_x: int, tile_y: int) -> Tuple[int, int]:
    """(tiles per residue class, tiles per class along y), from the largest class (class 0), as the grid."""
    lx, ly = -(-X // dilation), -(-Y // dilation)
    per_y = -(-ly // tile_y)
    return -(-lx // tile_x) * per_y, per_y


# ----------------------------------------------------------------------------------------------
# Loading triton (lazily) and where the kernels run
# ----------------------------------------------------------------------------------------------
_launcher = None  # the ._launch module once loaded (not named _launch: the submodule import sets that)
_load_error: Optional[str] = None


def available() -> bool:
    """True when triton is installed (found without importing it; a GPU is a separate question)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_requested() -> bool:
    """``TRITON_INTERPRET=1``: what Triton reads when the kernels are built. Read by :mod:`._kernels`
    once when it is loaded; :func:`interpreting` says what it found."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreting() -> bool:
    """True when the kernels run in Triton's interpreter (then they take CPU tensors, and only CPU
    tensors): as they were built, or, before they are loaded, as they would be."""
    return _launcher.INTERPRETED if _launcher is not None else interpreter_requested()


def load():
    """The launcher module, importing triton and building the kernels on the first call; None
    (and the reason in :func:`_extra_reasons`) when triton cannot be imported."""
    global _launcher, _load_error
    if _launcher is None and _load_error is None:
        try:
            from . import _launch as launch_module
        except Exception as exc:  # noqa: BLE001 - any import failure means "no triton"
            _load_error = repr(exc)
        else:
            _launcher = launch_module
    return _launcher


# ----------------------------------------------------------------------------------------------
# What it serves
# ----------------------------------------------------------------------------------------------
def _capabilities() -> Capabilities:
    interp = interpreting()
    return Capabilities(
        devices=("cpu",) if interp else ("cuda",),
        device_hint=(" (TRITON_INTERPRET=1 runs the kernels in Triton's interpreter, on CPU tensors only)" if interp
                     else " (on CPU only under TRITON_INTERPRET=1)"),
        dtypes=SUPPORTED_DTYPES, head_dims=(MIN_HEAD_DIM, MAX_HEAD_DIM), max_kernel_size=max(SUPPORTED_KERNEL_SIZES),
        # under the interpreter (CPU tensors, a test mode, orders of magnitude slower than the
        # compiled CPU kernel) only on request
        automatic=not interp)


def _extra_reasons(call: Call) -> List[str]:
    """What the declaration cannot say: triton missing, bfloat16 on pre-Ampere GPUs, 32-bit offsets.
    Triton is imported here, only for a call on the device the kernels would run on."""
    if call.device.type != ("cpu" if interpreting() else "cuda"):
        return []  # the declaration's device reason says it
    if load() is None:
        return [f"triton is not importable ({_load_error}); `pip install triton`"]
    out = []
    if (call.device.type == "cuda" and call.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(call.device) < (8, 0)):
        out.append("bfloat16 needs a GPU of compute capability >= 8.0; use float16 or float32")
    # offsets inside one batch item are 32-bit; 4x covers strided views such as q of a qkv projection
    if len(call.shape) == 5 and 4 * math.prod(call.shape[1:]) >= 2**31:
        out.append("one batch item spans >= 2^29 elements; the kernel's in-item offsets are 32-bit")
    return out


# ----------------------------------------------------------------------------------------------
# The op: custom ops with fake and autograd registrations (traced whole by torch.compile)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("dinat::na2d_triton_forward", mutates_args=())
def _forward_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rpb: Optional[torch.Tensor],
                kernel_size: int, dilation: int, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Output and log-sum-exp (``[B, heads, X, Y]`` float32, what backward needs besides q, k, v, O)."""
    return load().forward(query, key, value, rpb, kernel_size, dilation, scale)


@_forward_op.register_fake
def _(query, key, value, rpb, kernel_size, dilation, scale):
    B, X, Y, H, _ = query.shape
    return query.new_empty(query.shape), query.new_empty((B, H, X, Y), dtype=torch.float32)


@torch.library.custom_op("dinat::na2d_triton_backward", mutates_args=())
def _backward_op(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 rpb: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor, kernel_size: int, dilation: int,
                 scale: float, need_kv: bool, need_rpb: bool
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv, drpb; those not asked for come back empty (shape ``[0]``)."""
    dq, dk, dv, drpb = load().backward(grad_out, query, key, value, rpb, out, lse, kernel_size, dilation, scale,
                                       need_kv=need_kv, need_rpb=need_rpb)
    empty = query.new_empty((0,))
    return dq, (dk if need_kv else empty), (dv if need_kv else empty.clone()), (
        drpb if drpb is not None else empty.clone())


@_backward_op.register_fake
def _(grad_out, query, key, value, rpb, out, lse, kernel_size, dilation, scale, need_kv, need_rpb):
    kv_shape = query.shape if need_kv else (0,)
    rpb_grad = rpb is not None and need_rpb
    return (query.new_empty(query.shape), query.new_empty(kv_shape), query.new_empty(kv_shape),
            rpb.new_empty(rpb.shape) if rpb_grad else query.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    query, key, value, rpb, kernel_size, dilation, scale = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, rpb, out, lse)
    ctx.params = (kernel_size, dilation, scale)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    query, key, value, rpb, out, lse = ctx.saved_tensors
    kernel_size, dilation, scale = ctx.params
    need = ctx.needs_input_grad
    if torch.is_grad_enabled():  # create_graph=True: the kernels' backward is not differentiable
        from ..reference import differentiable_grads

        return (*differentiable_grads(grad_out, (query, key, value, rpb), kernel_size, dilation, scale, need[:4]),
                None, None, None)
    dq, dk, dv, drpb = _backward_op(grad_out, query, key, value, rpb, out, lse, kernel_size, dilation, scale,
                                    need[1] or need[2], rpb is not None and need[3])
    return (dq, dk if need[1] else None, dv if need[2] else None, drpb if rpb is not None and need[3] else None,
            None, None, None)


torch.library.register_autograd("dinat::na2d_triton_forward", _backward, setup_context=_setup_context)


def run(query, key, value, rpb, scale, call: Call):
    """The backend-table entry point (what the dispatcher calls once the call is accepted). Saves
    q, k, v, rpb, the output and the log-sum-exp: nothing of size N * K^2."""
    out, _ = _forward_op(query, key, value, rpb, call.kernel_size, call.dilation, float(scale))
    return out


def na2d_triton(query, key, value, kernel_size: int, dilation: int = 1, rpb: Optional[torch.Tensor] = None,
                scale: Optional[float] = None) -> torch.Tensor:
    """Neighbourhood attention through the fused Triton kernels, forward and backward:
    ``na2d(..., backend='triton')`` (validated as every call is; a call this backend cannot serve is
    a ValueError naming why).

    Same arguments and result as :func:`dinat_backbone.na2d`; any strides. float16 / bfloat16 are
    computed with float32 accumulation (P and dS are rounded to the input dtype before their
    matmuls, as in FlashAttention); float32 uses full-precision (not TF32) matmuls.
    """
    from ..dispatch import na2d

    return na2d(query, key, value, kernel_size, dilation, rpb, scale, backend=NAME)


def compiled_variant_count() -> Optional[int]:
    """Number of compiled kernels in Triton's in-memory caches (all three kernels, all devices), or
    None where this Triton keeps them elsewhere, in the interpreter, or without triton (loads the kernels)."""
    launcher = load()
    if launcher is None or interpreting():
        return None
    total = 0
    for fn in (launcher.fwd_kernel, launcher.dq_kernel, launcher.dkdv_kernel):
        caches = getattr(fn, "device_caches", None)
        if caches is not None:  # triton >= 3.2: device -> (kernel_cache, kernel_key_cache, target, backend, binder)
            total += sum(len(c[0]) for c in caches.values())
            continue
        cache = getattr(fn, "cache", None)
        if isinstance(cache, dict):  # older: device -> {key: kernel}
            total += sum(len(v) for v in cache.values())
            continue
        return None
    return total


BACKEND = Backend(NAME, _capabilities, run, _extra_reasons)
