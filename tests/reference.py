"""Brute-force neighbourhood attention written straight from the issue's formulas (explicit loops
over queries). Slow on purpose: it is the ground truth every backend is compared against."""
import torch


def axis_neighbours(i, length, kernel_size, dilation):
    ns = kernel_size // 2
    r = i % dilation
    class_len = -(-(length - r) // dilation)  # ceil
    p = i // dilation
    start = min(max(p - ns, 0), class_len - kernel_size)
    keys = [(start + t) * dilation + r for t in range(kernel_size)]
    rpb_idx = [(kernel_size - 1) + (key - i) // dilation for key in keys]
    return keys, rpb_idx


def na2d_reference(q, k, v, kernel_size, dilation=1, rpb=None, scale=None):
    """q, k, v: [B, X, Y, H, D]; differentiable (plain autograd through the loops)."""
    B, X, Y, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    rows = []
    for i in range(X):
        ky, ry = axis_neighbours(i, X, kernel_size, dilation)
        cols = []
        for j in range(Y):
            kx, rx = axis_neighbours(j, Y, kernel_size, dilation)
            kn = k[:, ky][:, :, kx]  # [B, K, K, H, D]
            vn = v[:, ky][:, :, kx]
            logits = torch.einsum("bhd,bxyhd->bhxy", q[:, i, j], kn) * scale
            if rpb is not None:
                logits = logits + rpb[:, ry][:, :, rx]
            attn = torch.softmax(logits.reshape(B, H, -1), -1).reshape_as(logits)
            cols.append(torch.einsum("bhxy,bxyhd->bhd", attn, vn))
        rows.append(torch.stack(cols, 1))
    return torch.stack(rows, 1)


def neighbour_tables(length, kernel_size, dilation):
    """``keys[i, t]`` and ``rpb_idx[i, t]`` as int64 tensors ``[L, K]``, from :func:`axis_neighbours`."""
    rows = [axis_neighbours(i, length, kernel_size, dilation) for i in range(length)]
    return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])


def na2d_reference_gathered(q, k, v, kernel_size, dilation=1, rpb=None, scale=None):
    """Same formulas as :func:`na2d_reference`, vectorised: every query's K x K neighbours gathered
    at once (``[B, X, K, Y, K, H, D]``, so only for small maps), plain autograd."""
    B, X, Y, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    ky, ry = neighbour_tables(X, kernel_size, dilation)
    kx, rx = neighbour_tables(Y, kernel_size, dilation)
    rows, cols = ky[:, :, None, None], kx[None, None, :, :]  # [X, K, 1, 1], [1, 1, Y, K]
    kn, vn = k[:, rows, cols], v[:, rows, cols]  # [B, X, K, Y, K, H, D]
    logits = torch.einsum("bxyhd,bxaythd->bxyhat", q, kn) * scale  # [B, X, Y, H, K, K]
    if rpb is not None:
        # bias[x, y, h, a, t] = rpb[h, ry[x, a], rx[y, t]]
        bias = rpb[:, ry[:, None, :, None], rx[None, :, None, :]]  # [H, X, Y, K, K]
        logits = logits + bias.permute(1, 2, 0, 3, 4)
    attn = torch.softmax(logits.flatten(-2), -1).unflatten(-1, (kernel_size, kernel_size))
    return torch.einsum("bxyhat,bxaythd->bxyhd", attn, vn)
