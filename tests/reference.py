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
