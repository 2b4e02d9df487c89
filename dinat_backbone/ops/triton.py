"""Fused Triton kernels for 2-D (dilated) neighbourhood attention with relative positional bias.

The ``triton`` backend of :func:`dinat_backbone.na2d`: forward and backward of the op described in
:mod:`dinat_backbone.ops` (NATTEN <= 0.17 semantics, heads-last ``[batch, X, Y, heads, head_dim]``),
for CUDA tensors, and for CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``), which
is how the tests run it on machines without a GPU. Importable with torch alone; triton is imported
here but its absence only makes :func:`reasons` say so.

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
  ``_dq_kernel`` (same query tiles and key boxes as the forward) computes ``delta = rowsum(dO * O)``,
  dQ and the RPB gradient; ``_dkdv_kernel`` takes a ``4 x 8`` key tile, whose queries (those whose
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
  grows with the tile, so the tiles are as small as ``tl.dot`` allows (every dimension >= 16): a
  ``4 x 8`` query tile's box at K = 7 is ``10 x 14``, six ``4 x 8`` key tiles, 192 keys for 49
  needed: 3.9x in the interior, less at the borders. :func:`score_work_ratio` gives the exact
  figure for a shape: 3.9x at 200x304 d = 1, 3.2x at the DiNAT dilated COCO shapes (whose
  ``7..8 x 10..11`` class maps fill their tiles only partly), 2.2-5.1x for K = 5..13 (14x at K = 3,
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
from __future__ import annotations

import math
import os

import torch

from .backend import Backend, Call, Capabilities

try:
    import triton
    import triton.language as tl

    _TRITON_ERROR: BaseException | None = None
except Exception as exc:  # noqa: BLE001 - any import failure means "no triton"
    triton = None
    tl = None
    _TRITON_ERROR = exc
_TRITON_ERROR_TEXT = repr(_TRITON_ERROR)  # (formatted once: no repr of an exception inside a compiled region)

__all__ = [
    "NAME",
    "SUPPORTED_KERNEL_SIZES",
    "TILES",
    "available",
    "compiled_variant_count",
    "flex_block_mask_work_ratio",
    "interpreting",
    "na2d_triton",
    "BACKEND",
    "run",
    "score_work",
    "score_work_ratio",
]

#: name in the backend table (``na2d(..., backend=NAME)``)
NAME = "triton"
SUPPORTED_KERNEL_SIZES = (3, 5, 7, 9, 11, 13)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634

#: Tiles, in residue-class positions: ``O*`` is a program's own tile (queries for the forward and
#: dQ, keys for dK/dV), ``I*`` the tiles its box is loaded in. Every tl.dot dimension must be >= 16:
#: 4 x 8 = 32 rows either way, and for the RPB-gradient regrouping OX * IX = 16, OY * IY = 64.
#: ``num_warps`` None: chosen by :func:`num_warps`. Warps and stages are set from compiled register
#: use, not yet from timings on a GPU.
TILES = {
    "fwd": {"OX": 4, "OY": 8, "IX": 4, "IY": 8, "num_warps": None, "num_stages": 2},
    "dq": {"OX": 4, "OY": 8, "IX": 4, "IY": 8, "num_warps": None, "num_stages": 2},
    "dkdv": {"OX": 4, "OY": 8, "IX": 4, "IY": 8, "num_warps": None, "num_stages": 2},
}


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
    hdp = max(16, _next_pow2(head_dim))
    return 2 if hdp <= 32 else (4 if hdp <= 64 else 8)


def available() -> bool:
    """True when triton imports (a GPU is a separate question: see :func:`reasons`)."""
    return triton is not None


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
# Integer arguments that change with the image (or the stage): excluded from Triton's specialisation
# on "== 1" and "divisible by 16", which would otherwise compile new variants as map sizes change
# (and dilation 1 vs 16 vs others, 16 heads vs 8). The strides stay specialised: the compiler needs their
# divisibility to prove
# 16-byte alignment of each position's channel vector (vector loads), and in a model call they are
# multiples of the channel count (3C from the qkv projection, C for the output), so they are
# divisible by 16 for every image size: one variant per model.
_RUNTIME_INTS = ["X", "Y", "H", "dil", "n_tiles", "n_tiles_y"]

def _device_function(fn):
    """``@triton.jit`` for a device function called by the kernels. Under the interpreter it stays a
    plain Python function: the kernels run as Python there anyway, and Triton 3.9's interpreter
    re-patches all of triton.language on every call of a jit device function (~1 ms, several times
    per inner tile), which made the interpreted tests three times slower."""
    return fn if os.environ.get("TRITON_INTERPRET", "0") == "1" else triton.jit(fn)


if triton is not None:

    @_device_function
    def _window_start(p, L, KS: tl.constexpr):
        """First window member of class position ``p`` on an axis of class length ``L``."""
        return tl.minimum(tl.maximum(p - KS // 2, 0), L - KS)

    @_device_function
    def _mm(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
        """``acc + a @ b`` (float32). ``UPCAST`` (set in the interpreter): Triton 3.9's interpreter keeps
        bfloat16 as raw uint16 and would multiply the bit patterns; both operands go through float32
        instead, which gives the products a tensor core gives (bf16 / fp16 x bf16 / fp16 is exact in
        float32)."""
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            return tl.dot(a, b, acc, input_precision=PREC)

    @_device_function
    def _mm_split_lhs(a, onehot, acc, NSPLIT: tl.constexpr, UPCAST: tl.constexpr):
        """``acc + a @ onehot`` for a float32 ``a`` and an exact 0/1 bfloat16 matrix, on bfloat16 tensor
        cores: ``a`` is split into NSPLIT bfloat16 parts (8 significant bits each; 2 parts for half
        inputs, 3 = all 24 bits of float32 for float32 inputs)."""
        hi = a.to(tl.bfloat16)
        acc = _mm(hi, onehot, acc, "tf32", UPCAST)
        rest = a - hi.to(tl.float32)
        mid = rest.to(tl.bfloat16)
        acc = _mm(mid, onehot, acc, "tf32", UPCAST)
        if NSPLIT > 2:
            acc = _mm((rest - mid.to(tl.float32)).to(tl.bfloat16), onehot, acc, "tf32", UPCAST)
        return acc

    @_device_function
    def _mm_split_rhs(onehot, b, acc, NSPLIT: tl.constexpr, UPCAST: tl.constexpr):
        """``acc + onehot @ b``, as :func:`_mm_split_lhs`."""
        hi = b.to(tl.bfloat16)
        acc = _mm(onehot, hi, acc, "tf32", UPCAST)
        rest = b - hi.to(tl.float32)
        mid = rest.to(tl.bfloat16)
        acc = _mm(onehot, mid, acc, "tf32", UPCAST)
        if NSPLIT > 2:
            acc = _mm(onehot, (rest - mid.to(tl.float32)).to(tl.bfloat16), acc, "tf32", UPCAST)
        return acc

    @_device_function
    def _program_geometry(X, Y, H, dil, n_tiles, n_tiles_y, OX: tl.constexpr, OY: tl.constexpr):
        """Decode the 1-D program id: (batch, head, residue class, tile) -> class sizes, tile origin.

        A 1-D grid has no 65535 limit on batch * heads or on d * d. Tile counts are those of the
        largest class (class 0); the tiles of smaller classes that fall outside do nothing."""
        pid = tl.program_id(0)
        tile = pid % n_tiles
        rest = pid // n_tiles
        cls = rest % (dil * dil)
        bh = rest // (dil * dil)
        b = bh // H
        h = bh % H
        rx = cls // dil
        ry = cls % dil
        Lx = (X - rx + dil - 1) // dil
        Ly = (Y - ry + dil - 1) // dil
        x0 = (tile // n_tiles_y) * OX
        y0 = (tile % n_tiles_y) * OY
        return pid, b, h, rx, ry, Lx, Ly, x0, y0

    @_device_function
    def _key_box(x0, L, OX: tl.constexpr, KS: tl.constexpr):
        """Keys of the query rows ``[x0, x0 + OX)`` (clipped to the class): ``[start(x0), start(last) + K)``."""
        last = tl.minimum(x0 + OX, L) - 1
        return _window_start(x0, L, KS), _window_start(last, L, KS) + KS

    @_device_function
    def _key_tiles(qx0, qy0, Lx, Ly, OX: tl.constexpr, OY: tl.constexpr, IX: tl.constexpr, IY: tl.constexpr,
                   KS: tl.constexpr):
        """Key box ``[bx0, bx1) x [by0, by1)`` of the query tile at (qx0, qy0) and how many ``IX x IY``
        key tiles cover it (none for a tile beyond its class)."""
        bx0, bx1 = _key_box(qx0, Lx, OX, KS)
        by0, by1 = _key_box(qy0, Ly, OY, KS)
        n_kx = tl.where((qx0 < Lx) & (qy0 < Ly), (bx1 - bx0 + IX - 1) // IX, 0)
        return bx0, bx1, by0, by1, n_kx, (by1 - by0 + IY - 1) // IY

    @_device_function
    def _query_box(x0, L, OX: tl.constexpr, KS: tl.constexpr):
        """Queries whose windows hold one of the key rows ``[x0, x0 + OX)``: the inverse of the clamp
        rule. Key k is held by queries ``k - K//2 .. k + K//2``, except that keys ``< K`` are also held
        by query 0 (whose window starts at 0) and keys ``>= L - K`` by query ``L - 1``."""
        last = tl.minimum(x0 + OX, L) - 1
        lo = tl.where(x0 <= KS - 1, 0, x0 - KS // 2)
        hi = tl.where(last >= L - KS, L, last + KS // 2 + 1)
        return lo, hi

    # The window start of padded queries (and, negated, the position of padded keys in dK/dV): far
    # enough that no pair with them passes the window test.
    FAR = tl.constexpr(1 << 28)

    @_device_function
    def _class_view(ptr, b64, h, rx, ry, sb, sx, sy, sh):
        """Batch b, head h, residue class (rx, ry) of a tensor: class position (px, py) is map position
        (rx + px * dil, ry + py * dil), so the class is a strided view of the original tensor."""
        return ptr + (b64 * sb + h * sh + rx * sx + ry * sy)

    @_device_function
    def _tile_offsets(px, py, sx, sy, sd, dil, d):
        """Offsets of a ``[positions, head_dim]`` tile at class positions (px, py) of a class view."""
        return ((px * sx + py * sy) * dil)[:, None] + d[None, :] * sd

    @_device_function
    def _tile_positions(x0, y0, Lx, Ly, TX: tl.constexpr, TY: tl.constexpr):
        """Class positions of the ``TX x TY`` tile at (x0, y0), flattened row-major (y fastest), and
        which of them lie below (Lx, Ly) (the class, or a box)."""
        t = tl.arange(0, TX * TY)
        px = x0 + t // TY
        py = y0 + t % TY
        return px, py, (px < Lx) & (py < Ly)

    @_device_function
    def _windows(qx, qy, q_ok, Lx, Ly, KS: tl.constexpr):
        """Window starts of the queries at (qx, qy); a padded query gets FAR, so that no key is in its
        window and the window test alone masks it."""
        return tl.where(q_ok, _window_start(qx, Lx, KS), FAR), _window_start(qy, Ly, KS)

    @_device_function
    def _load_kv(k_base, v_base, kx, ky, ok, skx, sky, skd, svx, svy, svd, dil, d, HD: tl.constexpr):
        """Key and value tiles at class positions (kx, ky); positions not ``ok`` and padded channels read 0."""
        mask = ok[:, None] & (d < HD)[None, :]
        k = tl.load(k_base + _tile_offsets(kx, ky, skx, sky, skd, dil, d), mask=mask, other=0.0)
        v = tl.load(v_base + _tile_offsets(kx, ky, svx, svy, svd, dil, d), mask=mask, other=0.0)
        return k, v

    @_device_function
    def _stat_offsets(b64, h, H, X, Y, rx, ry, px, py, dil):
        """Offsets into the per-query float32 statistics (log-sum-exp, delta), laid out [B, heads, X, Y]."""
        return (b64 * H + h) * X * Y + (rx + px * dil) * Y + (ry + py * dil)

    @_device_function
    def _tile_scores(a, b, kx, ky, wx, wy, rpb_ptrs, qk_scale, HAS_RPB: tl.constexpr, KS: tl.constexpr,
                     PREC: tl.constexpr, UPCAST: tl.constexpr):
        """Scores ``a @ b^T`` (log2 domain, + RPB) of one tile pair and the mask of neighbour pairs.

        ``kx, ky`` are the pairs' key positions and ``wx, wy`` their queries' window starts, shaped to
        broadcast over the tile (queries along rows in the forward / dQ, along columns in dK/dV). The
        box holds the union of a tile's windows; a pair counts only inside its own query's window,
        which also excludes padded keys, keys outside the class and padded queries (window FAR)."""
        s = _mm(a, tl.trans(b), tl.zeros([a.shape[0], b.shape[0]], tl.float32), PREC, UPCAST) * qk_scale
        ox = kx - wx
        oy = ky - wy
        valid = (ox >= 0) & (ox < KS) & (oy >= 0) & (oy < KS)
        if HAS_RPB:  # rpb[h, K-1 + kx - qx, K-1 + ky - qy], gathered from the small table
            s += tl.load(rpb_ptrs, mask=valid, other=0.0).to(tl.float32) * 1.4426950408889634
        return s, valid

    @triton.jit(do_not_specialize=_RUNTIME_INTS)
    def _fwd_kernel(
        Q, Kt, V, O, LSE, RPB, WORK,  # noqa: E741 (Q, K, V, O as in the attention literature)
        sqb, sqx, sqy, sqh, sqd,
        skb, skx, sky, skh, skd,
        svb, svx, svy, svh, svd,
        sob, sox, soy, soh, sod,
        srh, sra, srb,
        X, Y, H, dil, n_tiles, n_tiles_y, qk_scale,
        KS: tl.constexpr, HD: tl.constexpr, HDP: tl.constexpr, HAS_RPB: tl.constexpr,
        OX: tl.constexpr, OY: tl.constexpr, IX: tl.constexpr, IY: tl.constexpr,
        PREC: tl.constexpr, UPCAST: tl.constexpr, COUNT_WORK: tl.constexpr,
    ):
        """Output and log-sum-exp of one query tile (see the module docstring)."""
        BM: tl.constexpr = OX * OY
        pid, b, h, rx, ry, Lx, Ly, qx0, qy0 = _program_geometry(X, Y, H, dil, n_tiles, n_tiles_y, OX, OY)
        b64 = b.to(tl.int64)

        qx, qy, q_ok = _tile_positions(qx0, qy0, Lx, Ly, OX, OY)
        d = tl.arange(0, HDP)
        qm = q_ok[:, None] & (d < HD)[None, :]
        q = tl.load(_class_view(Q, b64, h, rx, ry, sqb, sqx, sqy, sqh) + _tile_offsets(qx, qy, sqx, sqy, sqd, dil, d),
                    mask=qm, other=0.0)
        wx, wy = _windows(qx, qy, q_ok, Lx, Ly, KS)  # each query's own window, for the pair mask
        rpb_q = (RPB + h * srh + (KS - 1 - qx) * sra + (KS - 1 - qy) * srb)[:, None]

        bx0, bx1, by0, by1, n_kx, n_ky = _key_tiles(qx0, qy0, Lx, Ly, OX, OY, IX, IY, KS)

        k_base = _class_view(Kt, b64, h, rx, ry, skb, skx, sky, skh)
        v_base = _class_view(V, b64, h, rx, ry, svb, svx, svy, svh)
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, HDP], tl.float32)
        for i in range(n_kx):
            for j in range(n_ky):
                kx, ky, k_in = _tile_positions(bx0 + i * IX, by0 + j * IY, bx1, by1, IX, IY)
                k, v = _load_kv(k_base, v_base, kx, ky, k_in, skx, sky, skd, svx, svy, svd, dil, d, HD)
                s, valid = _tile_scores(q, k, kx[None, :], ky[None, :], wx[:, None], wy[:, None],
                                        rpb_q + (kx * sra + ky * srb)[None, :], qk_scale, HAS_RPB, KS, PREC, UPCAST)
                s = tl.where(valid, s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                # rows with no valid pair yet (or padded rows) keep -inf: subtract 0 there, not -inf
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.exp2(s - m_safe[:, None])
                alpha = tl.exp2(m_i - m_safe)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = _mm(p.to(v.dtype), v, acc * alpha[:, None], PREC, UPCAST)
                m_i = m_new

        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        tl.store(_class_view(O, b64, h, rx, ry, sob, sox, soy, soh) + _tile_offsets(qx, qy, sox, soy, sod, dil, d),
                 out.to(O.dtype.element_ty), mask=qm)
        tl.store(LSE + _stat_offsets(b64, h, H, X, Y, rx, ry, qx, qy, dil),
                 tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log2(l_safe), mask=q_ok)
        if COUNT_WORK:
            tl.store(WORK + pid, n_kx * n_ky)

    @triton.jit(do_not_specialize=_RUNTIME_INTS)
    def _dq_kernel(
        Q, Kt, V, O, DO, LSE, DELTA, RPB, DQ, DRPB,  # noqa: E741
        sqb, sqx, sqy, sqh, sqd,
        skb, skx, sky, skh, skd,
        svb, svx, svy, svh, svd,
        sob, sox, soy, soh, sod,
        srh, sra, srb,
        X, Y, H, dil, n_tiles, n_tiles_y, qk_scale, scale,
        KS: tl.constexpr, HD: tl.constexpr, HDP: tl.constexpr, HAS_RPB: tl.constexpr, RPB_GRAD: tl.constexpr,
        RB: tl.constexpr, NSPLIT: tl.constexpr,
        OX: tl.constexpr, OY: tl.constexpr, IX: tl.constexpr, IY: tl.constexpr,
        PREC: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """dQ, delta = rowsum(dO * O) and this program's partial RPB gradient, for one query tile, over
        the forward's key box. O, dO and dQ share the strides ``so*`` (the wrapper makes them so)."""
        BM: tl.constexpr = OX * OY
        BN: tl.constexpr = IX * IY
        pid, b, h, rx, ry, Lx, Ly, qx0, qy0 = _program_geometry(X, Y, H, dil, n_tiles, n_tiles_y, OX, OY)
        b64 = b.to(tl.int64)

        qx, qy, q_ok = _tile_positions(qx0, qy0, Lx, Ly, OX, OY)
        d = tl.arange(0, HDP)
        qm = q_ok[:, None] & (d < HD)[None, :]
        q = tl.load(_class_view(Q, b64, h, rx, ry, sqb, sqx, sqy, sqh) + _tile_offsets(qx, qy, sqx, sqy, sqd, dil, d),
                    mask=qm, other=0.0)
        o_off = _tile_offsets(qx, qy, sox, soy, sod, dil, d)
        do = tl.load(_class_view(DO, b64, h, rx, ry, sob, sox, soy, soh) + o_off, mask=qm, other=0.0)
        o = tl.load(_class_view(O, b64, h, rx, ry, sob, sox, soy, soh) + o_off, mask=qm, other=0.0)
        stat = _stat_offsets(b64, h, H, X, Y, rx, ry, qx, qy, dil)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        tl.store(DELTA + stat, delta, mask=q_ok)
        lse = tl.load(LSE + stat, mask=q_ok, other=0.0)
        wx, wy = _windows(qx, qy, q_ok, Lx, Ly, KS)
        rpb_q = (RPB + h * srh + (KS - 1 - qx) * sra + (KS - 1 - qy) * srb)[:, None]

        bx0, bx1, by0, by1, n_kx, n_ky = _key_tiles(qx0, qy0, Lx, Ly, OX, OY, IX, IY, KS)

        k_base = _class_view(Kt, b64, h, rx, ry, skb, skx, sky, skh)
        v_base = _class_view(V, b64, h, rx, ry, svb, svx, svy, svh)
        if RPB_GRAD:
            # the dS tile regrouped as [(mx, nx), (my, ny)] (module docstring): the pair's x bin is
            # cx + nx - mx, its y bin cy + ny - my, with cx, cy fixed per key tile
            gx = tl.arange(0, OX * IX)
            gy = tl.arange(0, OY * IY)
            dgx = gx % IX - gx // IX
            dgy = gy % IY - gy // IY
            bins = tl.arange(0, RB)
            drpb = tl.zeros([RB, RB], tl.float32)
        dq = tl.zeros([BM, HDP], tl.float32)
        for i in range(n_kx):
            x0 = bx0 + i * IX
            for j in range(n_ky):
                y0 = by0 + j * IY
                kx, ky, k_in = _tile_positions(x0, y0, bx1, by1, IX, IY)
                k, v = _load_kv(k_base, v_base, kx, ky, k_in, skx, sky, skd, svx, svy, svd, dil, d, HD)
                s, valid = _tile_scores(q, k, kx[None, :], ky[None, :], wx[:, None], wy[:, None],
                                        rpb_q + (kx * sra + ky * srb)[None, :], qk_scale, HAS_RPB, KS, PREC, UPCAST)
                p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)  # P recomputed from the saved LSE
                dp = _mm(do, tl.trans(v), tl.zeros([BM, BN], tl.float32), PREC, UPCAST)
                ds = p * (dp - delta[:, None])
                dq = _mm(ds.to(k.dtype), k, dq, PREC, UPCAST)
                if RPB_GRAD:
                    ds2 = tl.reshape(tl.permute(tl.reshape(ds, (OX, OY, IX, IY)), (0, 2, 1, 3)), (OX * IX, OY * IY))
                    cx = x0 - qx0 + (KS - 1)
                    cy = y0 - qy0 + (KS - 1)
                    # (via float32: the interpreter converts int1 to bfloat16 as 0)
                    onehot_y = tl.where((dgy + cy)[:, None] == bins[None, :], 1.0, 0.0).to(tl.bfloat16)
                    onehot_x = tl.where((dgx + cx)[:, None] == bins[None, :], 1.0, 0.0).to(tl.bfloat16)
                    per_x = _mm_split_lhs(ds2, onehot_y, tl.zeros([OX * IX, RB], tl.float32), NSPLIT, UPCAST)
                    drpb = _mm_split_rhs(tl.trans(onehot_x), per_x, drpb, NSPLIT, UPCAST)

        tl.store(_class_view(DQ, b64, h, rx, ry, sob, sox, soy, soh) + o_off, (dq * scale).to(DQ.dtype.element_ty),
                 mask=qm)
        if RPB_GRAD:
            NB: tl.constexpr = 2 * KS - 1
            tl.store(DRPB + pid.to(tl.int64) * NB * NB + bins[:, None] * NB + bins[None, :], drpb,
                     mask=(bins[:, None] < NB) & (bins[None, :] < NB))

    @triton.jit(do_not_specialize=_RUNTIME_INTS)
    def _dkdv_kernel(
        Q, Kt, V, DO, LSE, DELTA, RPB, DK, DV, WORK,
        sqb, sqx, sqy, sqh, sqd,
        skb, skx, sky, skh, skd,
        svb, svx, svy, svh, svd,
        sob, sox, soy, soh, sod,
        sgb, sgx, sgy, sgh, sgd,
        srh, sra, srb,
        X, Y, H, dil, n_tiles, n_tiles_y, qk_scale, scale,
        KS: tl.constexpr, HD: tl.constexpr, HDP: tl.constexpr, HAS_RPB: tl.constexpr,
        OX: tl.constexpr, OY: tl.constexpr, IX: tl.constexpr, IY: tl.constexpr,
        PREC: tl.constexpr, UPCAST: tl.constexpr, COUNT_WORK: tl.constexpr,
    ):
        """dK, dV of one key tile, over the box of queries whose windows hold its keys. ``so*`` are the
        strides of dO, ``sg*`` those of dK and dV (one layout for both)."""
        BN: tl.constexpr = OX * OY  # this program's keys
        BM: tl.constexpr = IX * IY  # one query tile of the box
        pid, b, h, rx, ry, Lx, Ly, kx0, ky0 = _program_geometry(X, Y, H, dil, n_tiles, n_tiles_y, OX, OY)
        b64 = b.to(tl.int64)

        kx, ky, k_ok = _tile_positions(kx0, ky0, Lx, Ly, OX, OY)
        d = tl.arange(0, HDP)
        k, v = _load_kv(_class_view(Kt, b64, h, rx, ry, skb, skx, sky, skh),
                        _class_view(V, b64, h, rx, ry, svb, svx, svy, svh),
                        kx, ky, k_ok, skx, sky, skd, svx, svy, svd, dil, d, HD)
        kx_w = tl.where(k_ok, kx, -FAR)[:, None]  # padded keys fall in no window
        rpb_k = (RPB + h * srh + (KS - 1 + kx) * sra + (KS - 1 + ky) * srb)[:, None]

        qbx0, qbx1 = _query_box(kx0, Lx, OX, KS)
        qby0, qby1 = _query_box(ky0, Ly, OY, KS)
        n_qx = tl.where((kx0 < Lx) & (ky0 < Ly), (qbx1 - qbx0 + IX - 1) // IX, 0)
        n_qy = (qby1 - qby0 + IY - 1) // IY

        q_base = _class_view(Q, b64, h, rx, ry, sqb, sqx, sqy, sqh)
        o_base = _class_view(DO, b64, h, rx, ry, sob, sox, soy, soh)
        dk = tl.zeros([BN, HDP], tl.float32)
        dv = tl.zeros([BN, HDP], tl.float32)
        for i in range(n_qx):
            for j in range(n_qy):
                qx, qy, q_ok = _tile_positions(qbx0 + i * IX, qby0 + j * IY, qbx1, qby1, IX, IY)
                qm = q_ok[:, None] & (d < HD)[None, :]
                q = tl.load(q_base + _tile_offsets(qx, qy, sqx, sqy, sqd, dil, d), mask=qm, other=0.0)
                do = tl.load(o_base + _tile_offsets(qx, qy, sox, soy, sod, dil, d), mask=qm, other=0.0)
                stat = _stat_offsets(b64, h, H, X, Y, rx, ry, qx, qy, dil)
                lse = tl.load(LSE + stat, mask=q_ok, other=0.0)
                delta = tl.load(DELTA + stat, mask=q_ok, other=0.0)
                wx, wy = _windows(qx, qy, q_ok, Lx, Ly, KS)
                # scores transposed: [keys, queries]
                s, valid = _tile_scores(k, q, kx_w, ky[:, None], wx[None, :], wy[None, :],
                                        rpb_k - (qx * sra + qy * srb)[None, :], qk_scale, HAS_RPB, KS, PREC, UPCAST)
                p = tl.where(valid, tl.exp2(s - lse[None, :]), 0.0)
                dv = _mm(p.to(do.dtype), do, dv, PREC, UPCAST)
                dp = _mm(v, tl.trans(do), tl.zeros([BN, BM], tl.float32), PREC, UPCAST)
                ds = p * (dp - delta[None, :])
                dk = _mm(ds.to(q.dtype), q, dk, PREC, UPCAST)

        g_off = (b64 * sgb + h * sgh + rx * sgx + ry * sgy) + _tile_offsets(kx, ky, sgx, sgy, sgd, dil, d)
        km = k_ok[:, None] & (d < HD)[None, :]
        tl.store(DK + g_off, (dk * scale).to(DK.dtype.element_ty), mask=km)
        tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=km)
        if COUNT_WORK:
            tl.store(WORK + pid, n_qx * n_qy)


# ----------------------------------------------------------------------------------------------
# Where it can run
# ----------------------------------------------------------------------------------------------
def interpreting() -> bool:
    """True when the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when this module
    was imported): then they take CPU tensors, and only CPU tensors."""
    if triton is None:
        return False
    return type(_fwd_kernel).__name__ == "InterpretedFunction"


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


def _extra_reasons(call: Call) -> list[str]:
    """What the declaration cannot say: triton missing, bfloat16 on pre-Ampere GPUs, 32-bit offsets."""
    if triton is None:
        return [f"triton is not importable ({_TRITON_ERROR_TEXT}); `pip install triton`"]
    out = []
    if (call.device.type == "cuda" and not interpreting() and call.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(call.device) < (8, 0)):
        out.append("bfloat16 needs a GPU of compute capability >= 8.0; use float16 or float32")
    # offsets inside one batch item are 32-bit; 4x covers strided views such as q of a qkv projection
    if len(call.shape) == 5 and 4 * math.prod(call.shape[1:]) >= 2**31:
        out.append("one batch item spans >= 2^29 elements; the kernel's in-item offsets are 32-bit")
    return out


def compiled_variant_count() -> int | None:
    """Number of compiled kernels in Triton's in-memory caches (all three kernels, all devices), or
    None where this Triton keeps them elsewhere / in the interpreter."""
    if triton is None or interpreting():
        return None
    total = 0
    for fn in (_fwd_kernel, _dq_kernel, _dkdv_kernel):
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


# ----------------------------------------------------------------------------------------------
# Launch
# ----------------------------------------------------------------------------------------------
def _tile_counts(X, Y, dilation, OX, OY):
    """(tiles per class, tiles per class along y), from the largest class (class 0)."""
    lx, ly = -(-X // dilation), -(-Y // dilation)
    nty = -(-ly // OY)
    return -(-lx // OX) * nty, nty


def _strides(t):
    return list(t.stride())


def _flags(q):
    interp = interpreting()
    # the interpreter multiplies every dot in float32 (see _mm); on a GPU, float32 inputs use full
    # precision ("ieee", no TF32) and half inputs the tensor cores with float32 accumulation
    return {"PREC": "ieee" if q.dtype == torch.float32 else "tf32", "UPCAST": interp}


def _rpb_args(rpb, q):
    if rpb is None:
        return q, [0, 0, 0]
    return rpb, _strides(rpb)


def _forward(q, k, v, rpb, kernel_size, dilation, scale, count_work=False):
    B, X, Y, H, D = q.shape
    cfg = TILES["fwd"]
    n_tiles, n_tiles_y = _tile_counts(X, Y, dilation, cfg["OX"], cfg["OY"])
    grid = (B * H * dilation * dilation * n_tiles,)
    out = torch.empty((B, X, Y, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, X, Y), dtype=torch.float32, device=q.device)
    work = torch.zeros(grid[0] if count_work else 1, dtype=torch.int32, device=q.device)
    rpb_t, rpb_s = _rpb_args(rpb, q)
    _fwd_kernel[grid](
        q, k, v, out, lse, rpb_t, work,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *rpb_s,
        X, Y, H, dilation, n_tiles, n_tiles_y, float(scale) * LOG2E,
        KS=kernel_size, HD=D, HDP=max(16, _next_pow2(D)), HAS_RPB=rpb is not None,
        OX=cfg["OX"], OY=cfg["OY"], IX=cfg["IX"], IY=cfg["IY"], COUNT_WORK=count_work,
        num_warps=num_warps("fwd", q.dtype, D), num_stages=cfg["num_stages"], **_flags(q),
    )
    return out, lse, (work if count_work else None)


def _backward(grad_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale, need_kv=True, need_rpb=True,
              count_work=False):
    B, X, Y, H, D = q.shape
    # dO in the layout of O, so that O, dO and dQ share one set of strides in the dQ kernel
    do = grad_out.contiguous()
    dq = torch.empty_like(out)
    delta = torch.empty_like(lse)
    rpb_t, rpb_s = _rpb_args(rpb, q)
    common = dict(KS=kernel_size, HD=D, HDP=max(16, _next_pow2(D)), HAS_RPB=rpb is not None, **_flags(q))
    qk_scale = float(scale) * LOG2E

    cfg = TILES["dq"]
    n_tiles, n_tiles_y = _tile_counts(X, Y, dilation, cfg["OX"], cfg["OY"])
    grid = (B * H * dilation * dilation * n_tiles,)
    rpb_grad = rpb is not None and need_rpb
    nb = 2 * kernel_size - 1
    partial = torch.empty((grid[0], nb, nb) if rpb_grad else (1,), dtype=torch.float32, device=q.device)
    _dq_kernel[grid](
        q, k, v, out, do, lse, delta, rpb_t, dq, partial,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *rpb_s,
        X, Y, H, dilation, n_tiles, n_tiles_y, qk_scale, float(scale),
        RPB_GRAD=rpb_grad, RB=max(16, _next_pow2(nb)), NSPLIT=3 if q.dtype == torch.float32 else 2,
        OX=cfg["OX"], OY=cfg["OY"], IX=cfg["IX"], IY=cfg["IY"],
        num_warps=num_warps("dq", q.dtype, D), num_stages=cfg["num_stages"], **common,
    )
    drpb = None
    if rpb_grad:
        # programs are ordered (batch, head, class, tile): a fixed-order sum per head
        drpb = partial.view(B, H, -1, nb, nb).sum(dim=(0, 2)).to(rpb.dtype)

    dk = dv = work = None
    if need_kv:
        cfg = TILES["dkdv"]
        n_tiles, n_tiles_y = _tile_counts(X, Y, dilation, cfg["OX"], cfg["OY"])
        grid = (B * H * dilation * dilation * n_tiles,)
        dk = torch.empty((B, X, Y, H, D), dtype=k.dtype, device=k.device)
        dv = torch.empty_like(dk)
        work = torch.zeros(grid[0] if count_work else 1, dtype=torch.int32, device=q.device)
        _dkdv_kernel[grid](
            q, k, v, do, lse, delta, rpb_t, dk, dv, work,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *rpb_s,
            X, Y, H, dilation, n_tiles, n_tiles_y, qk_scale, float(scale),
            OX=cfg["OX"], OY=cfg["OY"], IX=cfg["IX"], IY=cfg["IY"], COUNT_WORK=count_work,
            num_warps=num_warps("dkdv", q.dtype, D), num_stages=cfg["num_stages"], **common,
        )
    return dq, dk, dv, drpb, (work if count_work else None)


class _NA2DTritonFunction(torch.autograd.Function):
    """Saves q, k, v, rpb, the output and the log-sum-exp (``[B, heads, X, Y]`` float32): nothing of
    size N * K^2."""

    @staticmethod
    def forward(ctx, q, k, v, rpb, kernel_size, dilation, scale):
        out, lse, _ = _forward(q, k, v, rpb, kernel_size, dilation, scale)
        ctx.save_for_backward(q, k, v, rpb, out, lse)
        ctx.params = (kernel_size, dilation, scale)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, rpb, out, lse = ctx.saved_tensors
        kernel_size, dilation, scale = ctx.params
        need = ctx.needs_input_grad
        dq, dk, dv, drpb, _ = _backward(grad_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale,
                                        need_kv=need[1] or need[2], need_rpb=need[3])
        return dq, dk, dv, drpb, None, None, None


def na2d_triton(query, key, value, kernel_size: int, dilation: int = 1, rpb: torch.Tensor | None = None,
                scale: float | None = None) -> torch.Tensor:
    """Neighbourhood attention through the fused Triton kernels, forward and backward:
    ``na2d(..., backend='triton')`` (validated as every call is; a call this backend cannot serve is
    a ValueError naming why).

    Same arguments and result as :func:`dinat_backbone.na2d`; any strides. float16 / bfloat16 are
    computed with float32 accumulation (P and dS are rounded to the input dtype before their
    matmuls, as in FlashAttention); float32 uses full-precision (not TF32) matmuls.
    """
    from .dispatch import na2d

    return na2d(query, key, value, kernel_size, dilation, rpb, scale, backend=NAME)


@torch.compiler.disable
def run(query, key, value, rpb, scale, call: Call):
    """The backend-table entry point (what the dispatcher calls once the call is accepted).
    ``torch.compile`` runs it eagerly (a graph break), so a new map size never triggers a retrace."""
    return _NA2DTritonFunction.apply(query, key, value, rpb, call.kernel_size, call.dilation, float(scale))


BACKEND = Backend(NAME, _capabilities, run, _extra_reasons)


# ----------------------------------------------------------------------------------------------
# Work accounting
# ----------------------------------------------------------------------------------------------
def _class_lengths(length: int, dilation: int):
    return [-(-(length - r) // dilation) for r in range(dilation)]


def _axis_work(length, kernel_size, dilation, outer, inner, kind):
    """Sum over the residue classes of one axis of (per class) the inner tiles each outer tile loops
    over, exactly as the kernels compute them; the tile count comes from class 0 as in the grid."""
    ns = kernel_size // 2

    def start(p, L):
        return min(max(p - ns, 0), L - kernel_size)

    lengths = _class_lengths(length, dilation)
    n_outer = -(-lengths[0] // outer)
    total = []
    for L in lengths:
        s = 0
        for t in range(n_outer):
            x0 = t * outer
            if x0 >= L:
                continue
            last = min(x0 + outer, L) - 1
            if kind == "keys":  # the key box of a query tile
                lo, hi = start(x0, L), start(last, L) + kernel_size
            else:  # the query box of a key tile
                lo = 0 if x0 <= kernel_size - 1 else x0 - ns
                hi = L if last >= L - kernel_size else last + ns + 1
            s += -(-(hi - lo) // inner)
        total.append(s)
    return total


def score_work(X: int, Y: int, kernel_size: int, dilation: int = 1, kernel: str = "fwd") -> int:
    """Score entries (query-key pairs, padding included) one (batch, head) of the kernel computes:
    ``kernel`` 'fwd' (the forward; the dQ kernel is the same), 'dkdv' (the dK/dV kernel)."""
    cfg = TILES[kernel]
    kind = "queries" if kernel == "dkdv" else "keys"
    wx = _axis_work(X, kernel_size, dilation, cfg["OX"], cfg["IX"], kind)
    wy = _axis_work(Y, kernel_size, dilation, cfg["OY"], cfg["IY"], kind)
    per_pair = cfg["OX"] * cfg["OY"] * cfg["IX"] * cfg["IY"]
    # a class (rx, ry) runs the outer tiles of row class rx times those of column class ry
    return per_pair * sum(wx) * sum(wy)


def score_work_ratio(X: int, Y: int, kernel_size: int, dilation: int = 1, kernel: str = "fwd") -> float:
    """:func:`score_work` divided by the ``X * Y * K^2`` score entries the op needs."""
    return score_work(X, Y, kernel_size, dilation, kernel) / (X * Y * kernel_size ** 2)


def flex_block_mask_work_ratio(X: int, Y: int, kernel_size: int, dilation: int = 1, block: int = 128) -> float:
    """The same ratio for the ``flex`` backend's block mask: tokens in row-major order, ``block x block``
    tiles, a tile computed in full when any of its pairs is a neighbour pair. Counted from the
    neighbourhood tables, without an N x N mask."""
    from dinat_backbone.ops import neighborhood_indices

    keys_x, _ = neighborhood_indices(X, kernel_size, dilation)  # [X, K]
    keys_y, _ = neighborhood_indices(Y, kernel_size, dilation)  # [Y, K]
    n_blocks = -(-(X * Y) // block)
    q_block = (torch.arange(X)[:, None] * Y + torch.arange(Y)[None, :]) // block  # [X, Y]
    used = torch.zeros(n_blocks * n_blocks, dtype=torch.bool)
    for a in range(kernel_size):  # one key row offset at a time: [X, Y, K] key tokens
        key_tok = keys_x[:, a][:, None, None] * Y + keys_y[None, :, :]
        used[(q_block[:, :, None] * n_blocks + key_tok // block).reshape(-1)] = True
    return int(used.sum()) * block * block / (X * Y * kernel_size ** 2)
