"""The Triton kernels of the ``triton`` backend: ``@triton.jit`` code only (see :mod:`.` for the layout
of the work, :mod:`._launch` for how they are launched). Imports triton: loaded on first use only.

The window rule is :func:`dinat_backbone.ops.geometry.window_start`, mirrored here by
:func:`_window_start` (in residue-class coordinates) and inverted by :func:`_query_box`; the probe
kernels at the end run those device functions alone, so the tests hold them to the geometry and
the work accounting (``tools/na_work.py``) to the kernels' loop counts.
"""
import triton
import triton.language as tl

from . import interpreter_requested

#: the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when they were built): read once,
#: here, where triton reads it too; :func:`dinat_backbone.ops.triton.interpreting` reports it
INTERPRETED = interpreter_requested()

# Integer arguments that change with the image (or the stage): excluded from Triton's specialisation
# on "== 1" and "divisible by 16", which would otherwise compile new variants as map sizes change
# (and dilation 1 vs 16 vs others, 16 heads vs 8). The strides stay specialised: the compiler needs
# their divisibility to prove 16-byte alignment of each position's channel vector (vector loads),
# and in a model call they are multiples of the channel count (3C from the qkv projection, C for the
# output), so they are divisible by 16 for every image size: one variant per model.
RUNTIME_INTS = ["X", "Y", "H", "dil", "n_tiles", "n_tiles_y"]

# The window start of padded queries (and, negated, the position of padded keys in dK/dV): far
# enough that no pair with them passes the window test.
FAR = tl.constexpr(1 << 28)


def _device_function(fn):
    """``@triton.jit`` for a device function called by the kernels. Under the interpreter it stays a
    plain Python function: the kernels run as Python there anyway, and Triton 3.9's interpreter
    re-patches all of triton.language on every call of a jit device function (~1 ms, several times
    per inner tile), which made the interpreted tests three times slower."""
    return fn if INTERPRETED else triton.jit(fn)


@_device_function
def _check_tiles(TILE_X: tl.constexpr, TILE_Y: tl.constexpr, INNER_X: tl.constexpr, INNER_Y: tl.constexpr):
    """Every tl.dot dimension must be >= 16: the score tiles (own x inner positions) and the RPB
    gradient's regrouped dS tile ``[(mx, nx), (my, ny)]``."""
    tl.static_assert(TILE_X * TILE_Y >= 16, "a program's own tile needs >= 16 positions (tl.dot)")
    tl.static_assert(INNER_X * INNER_Y >= 16, "an inner tile needs >= 16 positions (tl.dot)")
    tl.static_assert(TILE_X * INNER_X >= 16, "TILE_X * INNER_X must be >= 16 (the RPB gradient's dot)")
    tl.static_assert(TILE_Y * INNER_Y >= 16, "TILE_Y * INNER_Y must be >= 16 (the RPB gradient's dot)")



@_device_function
def _window_start(p, L, KERNEL_SIZE: tl.constexpr):
    """First window member of class position ``p`` on an axis of class length ``L``: mirrors
    :func:`dinat_backbone.ops.geometry.window_start` in class coordinates
    (``tests/test_triton.py::test_window_rule_mirrors_geometry`` holds it to it)."""
    return tl.minimum(tl.maximum(p - KERNEL_SIZE // 2, 0), L - KERNEL_SIZE)

@_device_function
def _mm(a, b, acc, DOT_PRECISION: tl.constexpr, DOTS_IN_FLOAT32: tl.constexpr):
    """``acc + a @ b`` (float32). ``DOTS_IN_FLOAT32`` (set in the interpreter): Triton 3.9's interpreter keeps
    bfloat16 as raw uint16 and would multiply the bit patterns; both operands go through float32
    instead, which gives the products a tensor core gives (bf16 / fp16 x bf16 / fp16 is exact in
    float32)."""
    if DOTS_IN_FLOAT32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PRECISION)

@_device_function
def _mm_onehot(x, onehot, acc, X_ON_LEFT: tl.constexpr, DOTS_IN_FLOAT32: tl.constexpr):
    """``acc + x @ onehot`` (``X_ON_LEFT``) or ``acc + onehot @ x``, on bfloat16 tensor cores."""
    if X_ON_LEFT:
        return _mm(x, onehot, acc, "tf32", DOTS_IN_FLOAT32)
    else:
        return _mm(onehot, x, acc, "tf32", DOTS_IN_FLOAT32)


@_device_function
def _mm_split(x, onehot, acc, X_ON_LEFT: tl.constexpr, BF16_PARTS: tl.constexpr, DOTS_IN_FLOAT32: tl.constexpr):
    """``acc + x @ onehot`` (or ``onehot @ x``) for a float32 ``x`` and an exact 0/1 bfloat16 matrix,
    on bfloat16 tensor cores: ``x`` is split into BF16_PARTS bfloat16 parts (8 significant bits each;
    2 parts for half inputs, 3 = all 24 bits of float32 for float32 inputs)."""
    hi = x.to(tl.bfloat16)
    acc = _mm_onehot(hi, onehot, acc, X_ON_LEFT, DOTS_IN_FLOAT32)
    rest = x - hi.to(tl.float32)
    mid = rest.to(tl.bfloat16)
    acc = _mm_onehot(mid, onehot, acc, X_ON_LEFT, DOTS_IN_FLOAT32)
    if BF16_PARTS > 2:
        acc = _mm_onehot((rest - mid.to(tl.float32)).to(tl.bfloat16), onehot, acc, X_ON_LEFT, DOTS_IN_FLOAT32)
    return acc


@_device_function
def _program_geometry(X, Y, H, dil, n_tiles, n_tiles_y, TILE_X: tl.constexpr, TILE_Y: tl.constexpr):
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
    x0 = (tile // n_tiles_y) * TILE_X
    y0 = (tile % n_tiles_y) * TILE_Y
    return pid, b, h, rx, ry, Lx, Ly, x0, y0

@_device_function
def _key_box(x0, L, TILE_X: tl.constexpr, KERNEL_SIZE: tl.constexpr):
    """Keys of the query rows ``[x0, x0 + TILE_X)`` (clipped to the class): ``[start(x0), start(last) + K)``."""
    last = tl.minimum(x0 + TILE_X, L) - 1
    return _window_start(x0, L, KERNEL_SIZE), _window_start(last, L, KERNEL_SIZE) + KERNEL_SIZE

@_device_function
def _key_tiles(qx0, qy0, Lx, Ly, TILE_X: tl.constexpr, TILE_Y: tl.constexpr, INNER_X: tl.constexpr,
               INNER_Y: tl.constexpr,
               KERNEL_SIZE: tl.constexpr):
    """Key box ``[bx0, bx1) x [by0, by1)`` of the query tile at (qx0, qy0) and how many ``INNER_X x INNER_Y``
    key tiles cover it (none for a tile beyond its class)."""
    bx0, bx1 = _key_box(qx0, Lx, TILE_X, KERNEL_SIZE)
    by0, by1 = _key_box(qy0, Ly, TILE_Y, KERNEL_SIZE)
    n_kx = tl.where((qx0 < Lx) & (qy0 < Ly), (bx1 - bx0 + INNER_X - 1) // INNER_X, 0)
    return bx0, bx1, by0, by1, n_kx, (by1 - by0 + INNER_Y - 1) // INNER_Y

@_device_function
def _query_box(x0, L, TILE_X: tl.constexpr, KERNEL_SIZE: tl.constexpr):
    """Queries whose windows hold one of the key rows ``[x0, x0 + TILE_X)``: the inverse of the clamp
    rule. Key k is held by queries ``k - K//2 .. k + K//2``, except that keys ``< K`` are also held
    by query 0 (whose window starts at 0) and keys ``>= L - K`` by query ``L - 1``."""
    last = tl.minimum(x0 + TILE_X, L) - 1
    lo = tl.where(x0 <= KERNEL_SIZE - 1, 0, x0 - KERNEL_SIZE // 2)
    hi = tl.where(last >= L - KERNEL_SIZE, L, last + KERNEL_SIZE // 2 + 1)
    return lo, hi


@_device_function
def _query_tiles(kx0, ky0, Lx, Ly, TILE_X: tl.constexpr, TILE_Y: tl.constexpr, INNER_X: tl.constexpr,
                 INNER_Y: tl.constexpr, KERNEL_SIZE: tl.constexpr):
    """Query box ``[qx0, qx1) x [qy0, qy1)`` of the key tile at (kx0, ky0) and how many
    ``INNER_X x INNER_Y`` query tiles cover it (none for a tile beyond its class)."""
    qx0, qx1 = _query_box(kx0, Lx, TILE_X, KERNEL_SIZE)
    qy0, qy1 = _query_box(ky0, Ly, TILE_Y, KERNEL_SIZE)
    n_qx = tl.where((kx0 < Lx) & (ky0 < Ly), (qx1 - qx0 + INNER_X - 1) // INNER_X, 0)
    return qx0, qx1, qy0, qy1, n_qx, (qy1 - qy0 + INNER_Y - 1) // INNER_Y


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
def _tile_positions(x0, y0, Lx, Ly, SIZE_X: tl.constexpr, SIZE_Y: tl.constexpr):
    """Class positions of the ``SIZE_X x SIZE_Y`` tile at (x0, y0), flattened row-major (y fastest), and
    which of them lie below (Lx, Ly) (the class, or a box)."""
    t = tl.arange(0, SIZE_X * SIZE_Y)
    px = x0 + t // SIZE_Y
    py = y0 + t % SIZE_Y
    return px, py, (px < Lx) & (py < Ly)

@_device_function
def _windows(qx, qy, q_ok, Lx, Ly, KERNEL_SIZE: tl.constexpr):
    """Window starts of the queries at (qx, qy); a padded query gets FAR, so that no key is in its
    window and the window test alone masks it."""
    return tl.where(q_ok, _window_start(qx, Lx, KERNEL_SIZE), FAR), _window_start(qy, Ly, KERNEL_SIZE)

@_device_function
def _load_kv(k_base, v_base, kx, ky, ok, skx, sky, skd, svx, svy, svd, dil, d, HEAD_DIM: tl.constexpr):
    """Key and value tiles at class positions (kx, ky); positions not ``ok`` and padded channels read 0."""
    mask = ok[:, None] & (d < HEAD_DIM)[None, :]
    k = tl.load(k_base + _tile_offsets(kx, ky, skx, sky, skd, dil, d), mask=mask, other=0.0)
    v = tl.load(v_base + _tile_offsets(kx, ky, svx, svy, svd, dil, d), mask=mask, other=0.0)
    return k, v

@_device_function
def _stat_offsets(b64, h, H, X, Y, rx, ry, px, py, dil):
    """Offsets into the per-query float32 statistics (log-sum-exp, delta), laid out [B, heads, X, Y]."""
    return (b64 * H + h) * X * Y + (rx + px * dil) * Y + (ry + py * dil)

@_device_function
def _query_program(q_ptr, X, Y, H, dil, n_tiles, n_tiles_y, sqb, sqx, sqy, sqh, sqd, TILE_X: tl.constexpr,
                   TILE_Y: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PADDED: tl.constexpr):
    """A forward / dQ program's query tile: its ids and class, the tile's positions, the channel
    range and the q tile itself (padded positions and channels read 0)."""
    pid, b, h, rx, ry, Lx, Ly, qx0, qy0 = _program_geometry(X, Y, H, dil, n_tiles, n_tiles_y, TILE_X, TILE_Y)
    b64 = b.to(tl.int64)
    qx, qy, q_ok = _tile_positions(qx0, qy0, Lx, Ly, TILE_X, TILE_Y)
    d = tl.arange(0, HEAD_DIM_PADDED)
    qm = q_ok[:, None] & (d < HEAD_DIM)[None, :]
    q = tl.load(_class_view(q_ptr, b64, h, rx, ry, sqb, sqx, sqy, sqh) + _tile_offsets(qx, qy, sqx, sqy, sqd, dil, d),
                mask=qm, other=0.0)
    return pid, b64, h, rx, ry, Lx, Ly, qx0, qy0, qx, qy, q_ok, d, qm, q


@_device_function
def _query_tile_keys(qx, qy, q_ok, qx0, qy0, Lx, Ly, h, rpb_ptr, srh, sra, srb, TILE_X: tl.constexpr,
                     TILE_Y: tl.constexpr, INNER_X: tl.constexpr, INNER_Y: tl.constexpr, KERNEL_SIZE: tl.constexpr):
    """What a query tile's scores need of its keys: each query's own window (for the pair mask), its
    row of RPB pointers, and the key box with its tile counts."""
    wx, wy = _windows(qx, qy, q_ok, Lx, Ly, KERNEL_SIZE)
    rpb_q = (rpb_ptr + h * srh + (KERNEL_SIZE - 1 - qx) * sra + (KERNEL_SIZE - 1 - qy) * srb)[:, None]
    bx0, bx1, by0, by1, n_kx, n_ky = _key_tiles(qx0, qy0, Lx, Ly, TILE_X, TILE_Y, INNER_X, INNER_Y, KERNEL_SIZE)
    return wx, wy, rpb_q, bx0, bx1, by0, by1, n_kx, n_ky


@_device_function
def _tile_scores(a, b, kx, ky, wx, wy, rpb_ptrs, qk_scale, HAS_RPB: tl.constexpr, KERNEL_SIZE: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, DOTS_IN_FLOAT32: tl.constexpr):
    """Scores ``a @ b^T`` (log2 domain, + RPB) of one tile pair and the mask of neighbour pairs.

    ``kx, ky`` are the pairs' key positions and ``wx, wy`` their queries' window starts, shaped to
    broadcast over the tile (queries along rows in the forward / dQ, along columns in dK/dV). The
    box holds the union of a tile's windows; a pair counts only inside its own query's window,
    which also excludes padded keys, keys outside the class and padded queries (window FAR)."""
    s = _mm(a, tl.trans(b), tl.zeros([a.shape[0], b.shape[0]], tl.float32), DOT_PRECISION, DOTS_IN_FLOAT32) * qk_scale
    ox = kx - wx
    oy = ky - wy
    valid = (ox >= 0) & (ox < KERNEL_SIZE) & (oy >= 0) & (oy < KERNEL_SIZE)
    if HAS_RPB:  # rpb[h, K-1 + kx - qx, K-1 + ky - qy], gathered from the small table
        s += tl.load(rpb_ptrs, mask=valid, other=0.0).to(tl.float32) * 1.4426950408889634
    return s, valid


@triton.jit(do_not_specialize=RUNTIME_INTS)
def fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, rpb_ptr,
    sqb, sqx, sqy, sqh, sqd, skb, skx, sky, skh, skd, svb, svx, svy, svh, svd,  # q, k, v
    sob, sox, soy, soh, sod, srh, sra, srb,  # out (and dO, dQ), rpb
    X, Y, H, dil, n_tiles, n_tiles_y, qk_scale,
    KERNEL_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PADDED: tl.constexpr, HAS_RPB: tl.constexpr,
    TILE_X: tl.constexpr, TILE_Y: tl.constexpr, INNER_X: tl.constexpr, INNER_Y: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOTS_IN_FLOAT32: tl.constexpr,
):
    """Output and log-sum-exp of one query tile (see the module docstring)."""
    _check_tiles(TILE_X, TILE_Y, INNER_X, INNER_Y)
    QUERIES: tl.constexpr = TILE_X * TILE_Y
    pid, b64, h, rx, ry, Lx, Ly, qx0, qy0, qx, qy, q_ok, d, qm, q = _query_program(
        q_ptr, X, Y, H, dil, n_tiles, n_tiles_y, sqb, sqx, sqy, sqh, sqd, TILE_X, TILE_Y, HEAD_DIM, HEAD_DIM_PADDED)
    wx, wy, rpb_q, bx0, bx1, by0, by1, n_kx, n_ky = _query_tile_keys(
        qx, qy, q_ok, qx0, qy0, Lx, Ly, h, rpb_ptr, srh, sra, srb, TILE_X, TILE_Y, INNER_X, INNER_Y, KERNEL_SIZE)

    k_base = _class_view(k_ptr, b64, h, rx, ry, skb, skx, sky, skh)
    v_base = _class_view(v_ptr, b64, h, rx, ry, svb, svx, svy, svh)
    m_i = tl.full([QUERIES], float("-inf"), tl.float32)
    l_i = tl.zeros([QUERIES], tl.float32)
    acc = tl.zeros([QUERIES, HEAD_DIM_PADDED], tl.float32)
    for i in range(n_kx):
        for j in range(n_ky):
            kx, ky, k_in = _tile_positions(bx0 + i * INNER_X, by0 + j * INNER_Y, bx1, by1, INNER_X, INNER_Y)
            k, v = _load_kv(k_base, v_base, kx, ky, k_in, skx, sky, skd, svx, svy, svd, dil, d, HEAD_DIM)
            s, valid = _tile_scores(q, k, kx[None, :], ky[None, :], wx[:, None], wy[:, None],
                                    rpb_q + (kx * sra + ky * srb)[None, :], qk_scale, HAS_RPB,
                                    KERNEL_SIZE, DOT_PRECISION, DOTS_IN_FLOAT32)
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # rows with no valid pair yet (or padded rows) keep -inf: subtract 0 there, not -inf
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = _mm(p.to(v.dtype), v, acc * alpha[:, None], DOT_PRECISION, DOTS_IN_FLOAT32)
            m_i = m_new

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(_class_view(out_ptr, b64, h, rx, ry, sob, sox, soy, soh) + _tile_offsets(qx, qy, sox, soy, sod, dil, d),
             out.to(out_ptr.dtype.element_ty), mask=qm)
    tl.store(lse_ptr + _stat_offsets(b64, h, H, X, Y, rx, ry, qx, qy, dil),
             tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log2(l_safe), mask=q_ok)


@triton.jit(do_not_specialize=RUNTIME_INTS)
def dq_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, dout_ptr, lse_ptr, delta_ptr, rpb_ptr, dq_ptr, drpb_ptr,
    sqb, sqx, sqy, sqh, sqd, skb, skx, sky, skh, skd, svb, svx, svy, svh, svd,  # q, k, v
    sob, sox, soy, soh, sod, srh, sra, srb,  # out (and dO, dQ), rpb
    X, Y, H, dil, n_tiles, n_tiles_y, qk_scale, scale,
    KERNEL_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PADDED: tl.constexpr, HAS_RPB: tl.constexpr,
    RPB_GRAD: tl.constexpr,
    RPB_BINS_PADDED: tl.constexpr, BF16_PARTS: tl.constexpr,
    TILE_X: tl.constexpr, TILE_Y: tl.constexpr, INNER_X: tl.constexpr, INNER_Y: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOTS_IN_FLOAT32: tl.constexpr,
):
    """dQ, delta = rowsum(dO * O) and this program's partial RPB gradient, for one query tile, over
    the forward's key box. O, dO and dQ share the strides ``so*`` (the wrapper makes them so)."""
    _check_tiles(TILE_X, TILE_Y, INNER_X, INNER_Y)
    QUERIES: tl.constexpr = TILE_X * TILE_Y
    KEYS: tl.constexpr = INNER_X * INNER_Y
    pid, b64, h, rx, ry, Lx, Ly, qx0, qy0, qx, qy, q_ok, d, qm, q = _query_program(
        q_ptr, X, Y, H, dil, n_tiles, n_tiles_y, sqb, sqx, sqy, sqh, sqd, TILE_X, TILE_Y, HEAD_DIM, HEAD_DIM_PADDED)
    o_off = _tile_offsets(qx, qy, sox, soy, sod, dil, d)
    do = tl.load(_class_view(dout_ptr, b64, h, rx, ry, sob, sox, soy, soh) + o_off, mask=qm, other=0.0)
    o = tl.load(_class_view(out_ptr, b64, h, rx, ry, sob, sox, soy, soh) + o_off, mask=qm, other=0.0)
    stat = _stat_offsets(b64, h, H, X, Y, rx, ry, qx, qy, dil)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(delta_ptr + stat, delta, mask=q_ok)
    lse = tl.load(lse_ptr + stat, mask=q_ok, other=0.0)
    wx, wy, rpb_q, bx0, bx1, by0, by1, n_kx, n_ky = _query_tile_keys(
        qx, qy, q_ok, qx0, qy0, Lx, Ly, h, rpb_ptr, srh, sra, srb, TILE_X, TILE_Y, INNER_X, INNER_Y, KERNEL_SIZE)

    k_base = _class_view(k_ptr, b64, h, rx, ry, skb, skx, sky, skh)
    v_base = _class_view(v_ptr, b64, h, rx, ry, svb, svx, svy, svh)
    if RPB_GRAD:
        # the dS tile regrouped as [(mx, nx), (my, ny)] (module docstring): the pair's x bin is
        # cx + nx - mx, its y bin cy + ny - my, with cx, cy fixed per key tile
        gx = tl.arange(0, TILE_X * INNER_X)
        gy = tl.arange(0, TILE_Y * INNER_Y)
        dgx = gx % INNER_X - gx // INNER_X
        dgy = gy % INNER_Y - gy // INNER_Y
        bins = tl.arange(0, RPB_BINS_PADDED)
        drpb = tl.zeros([RPB_BINS_PADDED, RPB_BINS_PADDED], tl.float32)
    dq = tl.zeros([QUERIES, HEAD_DIM_PADDED], tl.float32)
    for i in range(n_kx):
        x0 = bx0 + i * INNER_X
        for j in range(n_ky):
            y0 = by0 + j * INNER_Y
            kx, ky, k_in = _tile_positions(x0, y0, bx1, by1, INNER_X, INNER_Y)
            k, v = _load_kv(k_base, v_base, kx, ky, k_in, skx, sky, skd, svx, svy, svd, dil, d, HEAD_DIM)
            s, valid = _tile_scores(q, k, kx[None, :], ky[None, :], wx[:, None], wy[:, None],
                                    rpb_q + (kx * sra + ky * srb)[None, :], qk_scale, HAS_RPB,
                                    KERNEL_SIZE, DOT_PRECISION, DOTS_IN_FLOAT32)
            p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)  # P recomputed from the saved LSE
            dp = _mm(do, tl.trans(v), tl.zeros([QUERIES, KEYS], tl.float32), DOT_PRECISION, DOTS_IN_FLOAT32)
            ds = p * (dp - delta[:, None])
            dq = _mm(ds.to(k.dtype), k, dq, DOT_PRECISION, DOTS_IN_FLOAT32)
            if RPB_GRAD:
                ds2 = tl.reshape(tl.permute(tl.reshape(ds, (TILE_X, TILE_Y, INNER_X, INNER_Y)), (0, 2, 1, 3)),
                                 (TILE_X * INNER_X, TILE_Y * INNER_Y))
                cx = x0 - qx0 + (KERNEL_SIZE - 1)
                cy = y0 - qy0 + (KERNEL_SIZE - 1)
                # (via float32: the interpreter converts int1 to bfloat16 as 0)
                onehot_y = tl.where((dgy + cy)[:, None] == bins[None, :], 1.0, 0.0).to(tl.bfloat16)
                onehot_x = tl.where((dgx + cx)[:, None] == bins[None, :], 1.0, 0.0).to(tl.bfloat16)
                per_x = _mm_split(ds2, onehot_y, tl.zeros([TILE_X * INNER_X, RPB_BINS_PADDED], tl.float32), True,
                                  BF16_PARTS, DOTS_IN_FLOAT32)
                drpb = _mm_split(per_x, tl.trans(onehot_x), drpb, False, BF16_PARTS, DOTS_IN_FLOAT32)

    tl.store(_class_view(dq_ptr, b64, h, rx, ry, sob, sox, soy, soh) + o_off, (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=qm)
    if RPB_GRAD:
        RPB_BINS: tl.constexpr = 2 * KERNEL_SIZE - 1
        tl.store(drpb_ptr + pid.to(tl.int64) * RPB_BINS * RPB_BINS + bins[:, None] * RPB_BINS + bins[None, :], drpb,
                 mask=(bins[:, None] < RPB_BINS) & (bins[None, :] < RPB_BINS))


@triton.jit(do_not_specialize=RUNTIME_INTS)
def dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, rpb_ptr, dk_ptr, dv_ptr,
    sqb, sqx, sqy, sqh, sqd, skb, skx, sky, skh, skd, svb, svx, svy, svh, svd,  # q, k, v
    sob, sox, soy, soh, sod, sgb, sgx, sgy, sgh, sgd, srh, sra, srb,  # dO, dK (and dV), rpb
    X, Y, H, dil, n_tiles, n_tiles_y, qk_scale, scale,
    KERNEL_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PADDED: tl.constexpr, HAS_RPB: tl.constexpr,
    TILE_X: tl.constexpr, TILE_Y: tl.constexpr, INNER_X: tl.constexpr, INNER_Y: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOTS_IN_FLOAT32: tl.constexpr,
):
    """dK, dV of one key tile, over the box of queries whose windows hold its keys. ``so*`` are the
    strides of dO, ``sg*`` those of dK and dV (one layout for both)."""
    _check_tiles(TILE_X, TILE_Y, INNER_X, INNER_Y)
    KEYS: tl.constexpr = TILE_X * TILE_Y  # this program's keys
    QUERIES: tl.constexpr = INNER_X * INNER_Y  # one query tile of the box
    pid, b, h, rx, ry, Lx, Ly, kx0, ky0 = _program_geometry(X, Y, H, dil, n_tiles, n_tiles_y, TILE_X, TILE_Y)
    b64 = b.to(tl.int64)

    kx, ky, k_ok = _tile_positions(kx0, ky0, Lx, Ly, TILE_X, TILE_Y)
    d = tl.arange(0, HEAD_DIM_PADDED)
    k, v = _load_kv(_class_view(k_ptr, b64, h, rx, ry, skb, skx, sky, skh),
                    _class_view(v_ptr, b64, h, rx, ry, svb, svx, svy, svh),
                    kx, ky, k_ok, skx, sky, skd, svx, svy, svd, dil, d, HEAD_DIM)
    kx_w = tl.where(k_ok, kx, -FAR)[:, None]  # padded keys fall in no window
    rpb_k = (rpb_ptr + h * srh + (KERNEL_SIZE - 1 + kx) * sra + (KERNEL_SIZE - 1 + ky) * srb)[:, None]

    qbx0, qbx1, qby0, qby1, n_qx, n_qy = _query_tiles(kx0, ky0, Lx, Ly, TILE_X, TILE_Y, INNER_X, INNER_Y,
                                                      KERNEL_SIZE)

    q_base = _class_view(q_ptr, b64, h, rx, ry, sqb, sqx, sqy, sqh)
    o_base = _class_view(dout_ptr, b64, h, rx, ry, sob, sox, soy, soh)
    dk = tl.zeros([KEYS, HEAD_DIM_PADDED], tl.float32)
    dv = tl.zeros([KEYS, HEAD_DIM_PADDED], tl.float32)
    for i in range(n_qx):
        for j in range(n_qy):
            qx, qy, q_ok = _tile_positions(qbx0 + i * INNER_X, qby0 + j * INNER_Y, qbx1, qby1, INNER_X, INNER_Y)
            qm = q_ok[:, None] & (d < HEAD_DIM)[None, :]
            q = tl.load(q_base + _tile_offsets(qx, qy, sqx, sqy, sqd, dil, d), mask=qm, other=0.0)
            do = tl.load(o_base + _tile_offsets(qx, qy, sox, soy, sod, dil, d), mask=qm, other=0.0)
            stat = _stat_offsets(b64, h, H, X, Y, rx, ry, qx, qy, dil)
            lse = tl.load(lse_ptr + stat, mask=q_ok, other=0.0)
            delta = tl.load(delta_ptr + stat, mask=q_ok, other=0.0)
            wx, wy = _windows(qx, qy, q_ok, Lx, Ly, KERNEL_SIZE)
            # scores transposed: [keys, queries]
            s, valid = _tile_scores(k, q, kx_w, ky[:, None], wx[None, :], wy[None, :],
                                    rpb_k - (qx * sra + qy * srb)[None, :], qk_scale, HAS_RPB,
                                    KERNEL_SIZE, DOT_PRECISION, DOTS_IN_FLOAT32)
            p = tl.where(valid, tl.exp2(s - lse[None, :]), 0.0)
            dv = _mm(p.to(do.dtype), do, dv, DOT_PRECISION, DOTS_IN_FLOAT32)
            dp = _mm(v, tl.trans(do), tl.zeros([KEYS, QUERIES], tl.float32), DOT_PRECISION, DOTS_IN_FLOAT32)
            ds = p * (dp - delta[None, :])
            dk = _mm(ds.to(q.dtype), q, dk, DOT_PRECISION, DOTS_IN_FLOAT32)

    g_off = (b64 * sgb + h * sgh + rx * sgx + ry * sgy) + _tile_offsets(kx, ky, sgx, sgy, sgd, dil, d)
    km = k_ok[:, None] & (d < HEAD_DIM)[None, :]
    tl.store(dk_ptr + g_off, (dk * scale).to(dk_ptr.dtype.element_ty), mask=km)
    tl.store(dv_ptr + g_off, dv.to(dv_ptr.dtype.element_ty), mask=km)


# ----------------------------------------------------------------------------------------------
# Probes (tests and tools only): the device functions above, run alone
# ----------------------------------------------------------------------------------------------
@triton.jit
def window_probe_kernel(start_ptr, query_lo_ptr, query_hi_ptr, L, KERNEL_SIZE: tl.constexpr,
                        POSITIONS: tl.constexpr):
    """Per position p < L of one axis: the window start and the query box of the one-row key tile at p."""
    p = tl.arange(0, POSITIONS)
    ok = p < L
    tl.store(start_ptr + p, _window_start(p, L, KERNEL_SIZE), mask=ok)
    lo, hi = _query_box(p, L, 1, KERNEL_SIZE)
    tl.store(query_lo_ptr + p, lo, mask=ok)
    tl.store(query_hi_ptr + p, hi, mask=ok)


@triton.jit(do_not_specialize=RUNTIME_INTS)
def work_probe_kernel(work_ptr, X, Y, H, dil, n_tiles, n_tiles_y, KEY_TILES: tl.constexpr,
                      KERNEL_SIZE: tl.constexpr, TILE_X: tl.constexpr, TILE_Y: tl.constexpr, INNER_X: tl.constexpr,
                      INNER_Y: tl.constexpr):
    """The inner tiles each program of the forward / dQ (``KEY_TILES``) or dK/dV kernel loops over,
    from the same device functions and grid those kernels use."""
    pid, b, h, rx, ry, Lx, Ly, x0, y0 = _program_geometry(X, Y, H, dil, n_tiles, n_tiles_y, TILE_X, TILE_Y)
    if KEY_TILES:
        _, _, _, _, n_x, n_y = _key_tiles(x0, y0, Lx, Ly, TILE_X, TILE_Y, INNER_X, INNER_Y, KERNEL_SIZE)
    else:
        _, _, _, _, n_x, n_y = _query_tiles(x0, y0, Lx, Ly, TILE_X, TILE_Y, INNER_X, INNER_Y, KERNEL_SIZE)
    tl.store(work_ptr + pid, n_x * n_y)
