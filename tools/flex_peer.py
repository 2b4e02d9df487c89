"""The flex_attention peer of the benchmarks: 2-D neighbourhood attention with RPB written the way a
user would write it today without this package, with ``torch.nn.attention.flex_attention``.

Not a backend of ``dinat_backbone.ops`` (one was removed: its mask was a dense N x N tensor); the
peer that tools/benchmark_na.py times the op against. Written as NATTEN's own flex backend does it:

* dilation: dilated NA on an X x Y map is plain NA on each of its d x d residue-class sub-maps
  (``dinat_backbone.ops.geometry``), so the classes are folded into the batch (the map padded to a
  multiple of d, each class a ceil(X/d) x ceil(Y/d) grid, row-major tokens); a class's real
  extent ``ceil((X - r) / d)`` follows from its batch index;
* the neighbourhood: a :class:`~torch.nn.attention.flex_attention.BlockMask` built from the
  geometry, without an N x N tensor: for each 128-token query block, the key blocks its queries'
  windows touch (:func:`block_mask`), split into blocks every pair of which is a neighbour pair
  (computed without the mask_mod) and partial ones (the mask_mod, from the same window rule,
  decides per pair);
* the bias: a ``score_mod`` adding ``rpb[h, dx + K - 1, dy + K - 1]``; ``rpb`` is captured, so its
  gradient flows (flex supports captured-buffer gradients since torch 2.6).

The grid's padding queries (rows / columns past a class's extent) get the window of the class's last
row / column and are cut off the output; padding keys are in no window.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from dinat_backbone.ops.geometry import window_start

#: flex_attention's sparse block size (tokens per query / key block of the block mask)
BLOCK = 128


def _class_extent(length: int, dilation: int, residue):
    """Members of residue class ``residue`` on an axis of ``length`` (an int or an int tensor)."""
    return (length - residue + dilation - 1) // dilation


def _class_blocks(lx: int, ly: int, gx: int, gy: int, kernel_size: int):
    """``(partial, full)`` boolean ``[n_blocks, n_blocks]`` tables for one residue class of extent
    ``lx x ly`` laid out in a ``gx x gy`` grid: the (query block, key block) pairs holding at least
    one neighbour pair, split into those that hold only neighbour pairs (full) and the rest.

    Counted from the windows (K key rows at a time: ``[gx, gy, K]`` key tokens), never from an
    N x N mask: memory O(N K + n_blocks^2)."""
    n_tokens = gx * gy
    n_blocks = -(-n_tokens // BLOCK)
    start_x = window_start(torch.arange(gx), lx, kernel_size, 1)  # [gx]
    start_y = window_start(torch.arange(gy), ly, kernel_size, 1)  # [gy]
    q_block = ((torch.arange(gx)[:, None] * gy + torch.arange(gy)[None, :]) // BLOCK)[:, :, None]  # [gx, gy, 1]
    cols = start_y[:, None] + torch.arange(kernel_size)[None, :]  # [gy, K]
    pairs = torch.zeros(n_blocks * n_blocks, dtype=torch.int64)
    for a in range(kernel_size):  # the a-th key row of every window: [gx, gy, K] key tokens
        key_tok = (start_x[:, None, None] + a) * gy + cols[None, :, :]
        idx = (q_block * n_blocks + key_tok // BLOCK).reshape(-1)
        pairs += torch.bincount(idx, minlength=n_blocks * n_blocks)
    pairs = pairs.view(n_blocks, n_blocks)
    # a block is full when all its BLOCK x BLOCK pairs are neighbour pairs (a window holds K^2
    # distinct keys, so no pair is counted twice); the ragged last block stays partial
    full = pairs == BLOCK * BLOCK
    return (pairs > 0) & ~full, full


def _as_kv_blocks(table: torch.Tensor):
    """``(num_blocks [..., Q], indices [..., Q, KV])`` int32 of a boolean table, used blocks first."""
    num = table.sum(-1, dtype=torch.int32)
    indices = torch.argsort((~table).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num, indices


@functools.lru_cache(maxsize=32)
def block_mask(batch: int, X: int, Y: int, kernel_size: int, dilation: int, device: str = "cpu"):
    """The :class:`~torch.nn.attention.flex_attention.BlockMask` of dilated NA on an X x Y map for
    ``batch`` maps, its d x d residue classes folded into the batch (batch index ``b * d^2 + class``);
    one mask for every head. Cached: it depends on the geometry only, as a user's would."""
    from torch.nn.attention.flex_attention import BlockMask

    d, K = dilation, kernel_size
    gx, gy = -(-X // d), -(-Y // d)
    tables = {}  # classes of equal extent share their tables (at most 4 distinct extents)
    partial, full = [], []
    for rx in range(d):
        for ry in range(d):
            extent = (_class_extent(X, d, rx), _class_extent(Y, d, ry))
            if extent not in tables:
                tables[extent] = _class_blocks(*extent, gx, gy, K)
            partial.append(tables[extent][0])
            full.append(tables[extent][1])
    partial = torch.stack(partial).repeat(batch, 1, 1)[:, None]  # [batch * d^2, 1, Q, KV]
    full = torch.stack(full).repeat(batch, 1, 1)[:, None]
    kv_num, kv_idx = _as_kv_blocks(partial)
    full_num, full_idx = _as_kv_blocks(full)

    def neighbour_pair(b, h, q_idx, kv_idx):
        cls = b % (d * d)
        lx, ly = _class_extent(X, d, cls // d), _class_extent(Y, d, cls % d)
        qx, qy = q_idx // gy, q_idx % gy
        kx, ky = kv_idx // gy, kv_idx % gy
        sx, sy = window_start(qx, lx, K, 1), window_start(qy, ly, K, 1)
        return (kx >= sx) & (kx < sx + K) & (ky >= sy) & (ky < sy + K)

    n_tokens = gx * gy
    return BlockMask.from_kv_blocks(kv_num.to(device), kv_idx.to(device), full_num.to(device), full_idx.to(device),
                                    BLOCK_SIZE=BLOCK, mask_mod=neighbour_pair, seq_lengths=(n_tokens, n_tokens))


def _fold(t: torch.Tensor, d: int) -> torch.Tensor:
    """``[B, X, Y, H, D]`` -> ``[B * d^2, H, gx * gy, D]``: residue classes into the batch (zero padding)."""
    B, X, Y, H, D = t.shape
    gx, gy = -(-X // d), -(-Y // d)
    t = torch.nn.functional.pad(t, (0, 0, 0, 0, 0, gy * d - Y, 0, gx * d - X))
    t = t.view(B, gx, d, gy, d, H, D).permute(0, 2, 4, 5, 1, 3, 6)  # [B, rx, ry, H, gx, gy, D]
    return t.reshape(B * d * d, H, gx * gy, D)


def _unfold(t: torch.Tensor, B: int, X: int, Y: int, d: int) -> torch.Tensor:
    """Inverse of :func:`_fold`, the padding cut off."""
    _, H, _, D = t.shape
    gx, gy = -(-X // d), -(-Y // d)
    t = t.view(B, d, d, H, gx, gy, D).permute(0, 4, 1, 5, 2, 3, 6)  # [B, gx, rx, gy, ry, H, D]
    return t.reshape(B, gx * d, gy * d, H, D)[:, :X, :Y]


@functools.lru_cache(maxsize=1)
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # flex_attention is meant to run compiled (eager flex materialises the scores); static
    # shapes, as NATTEN's flex backend compiles it
    return torch.compile(flex_attention, dynamic=False)


def rpb_score_mod(rpb: torch.Tensor, kernel_size: int, grid_y: int):
    """``score + rpb[h, qx - kx + K - 1, ...]`` with the row / column offsets of the folded grid.
    The index is clamped: flex evaluates score_mod on every pair of a partial block, neighbours or
    not (the mask drops the others)."""
    K = kernel_size

    def add_rpb(score, b, h, q_idx, kv_idx):
        ix = (kv_idx // grid_y - q_idx // grid_y + K - 1).clamp(0, 2 * K - 2)
        iy = (kv_idx % grid_y - q_idx % grid_y + K - 1).clamp(0, 2 * K - 2)
        return score + rpb[h, ix, iy]

    return add_rpb


def flex_na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int = 1,
              rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """Neighbourhood attention (``dinat_backbone.ops.na2d``'s contract: ``[B, X, Y, heads, head_dim]``,
    scale ``head_dim ** -0.5``) by compiled flex_attention with :func:`block_mask` and
    :func:`rpb_score_mod`. Differentiable in q, k, v and rpb."""
    B, X, Y, H, D = q.shape
    d = dilation
    mask = block_mask(B, X, Y, kernel_size, d, str(q.device))
    score_mod = None if rpb is None else rpb_score_mod(rpb, kernel_size, -(-Y // d))
    out = _compiled_flex_attention()(_fold(q, d), _fold(k, d), _fold(v, d), score_mod=score_mod, block_mask=mask,
                                     scale=scale)
    return _unfold(out, B, X, Y, d)


def flex_work_ratio(X: int, Y: int, kernel_size: int, dilation: int = 1) -> float:
    """Score entries this peer computes (every pair of each used 128 x 128 block, of every residue
    class) / the X * Y * K^2 the op needs."""
    mask = block_mask(1, X, Y, kernel_size, dilation)
    used = int(mask.kv_num_blocks.sum()) + int(mask.full_kv_num_blocks.sum())
    return used * BLOCK * BLOCK / (X * Y * kernel_size ** 2)
