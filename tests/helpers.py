"""Helpers the op test files share (tests/test_ops.py, tests/test_triton.py, tests/test_kernel_sweep.py,
tests/test_gelu_backward.py): random inputs, the relative error the tolerances are stated in, one
forward + backward, and the compiled kernel's instruction sets."""
import contextlib

import torch

__all__ = ["rel_err", "make_inputs", "forward_and_grads", "ISA_ORDER", "instruction_sets", "using_isa"]

#: the compiled kernel's instruction sets, from the least to the most capable; avx512bf16 differs
#: from avx512 only for bfloat16 inputs
ISA_ORDER = ("generic", "avx2", "avx512", "avx512bf16")


def instruction_sets():
    """The instruction sets of ISA_ORDER this CPU runs (capping to one it lacks gives a lower one)."""
    from dinat_backbone import _C

    previous = _C.isa()
    try:
        available = {_C.set_isa(name) for name in ISA_ORDER}
    finally:
        _C.set_isa(previous)
    return [name for name in ISA_ORDER if name in available]


@contextlib.contextmanager
def using_isa(isa: str):
    """The compiled kernel capped to ``isa`` inside the block, the previous one restored after."""
    from dinat_backbone import _C

    previous = _C.isa()
    try:
        _C.set_isa(isa)
        yield
    finally:
        _C.set_isa(previous)


def rel_err(actual, expected) -> float:
    """max |actual - expected| / max |expected|, in float64 (the tests' tolerances are in this measure)."""
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def make_inputs(B, X, Y, H, D, K, use_rpb, dtype=torch.float64, *, seed=0, grad_out=False, as_float64=False,
                device="cpu"):
    """q, k, v ``[B, X, Y, H, D]``, rpb ``[H, 2K-1, 2K-1]`` (None without ``use_rpb``) and, with
    ``grad_out``, a gradient for the output: drawn in float64 from ``seed`` and rounded to ``dtype``;
    ``as_float64`` returns the rounded values as float64 (a float64 reference's exact inputs)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(B, X, Y, H, D, generator=gen, dtype=torch.float64) for _ in range(4 if grad_out else 3)]
    rpb = torch.randn(H, 2 * K - 1, 2 * K - 1, generator=gen, dtype=torch.float64) if use_rpb else None
    tensors.insert(3, rpb)

    def cast(t):
        if t is None:
            return None
        t = t.to(dtype)
        return (t.to(torch.float64) if as_float64 else t).to(device)

    return tuple(cast(t) for t in tensors)


def forward_and_grads(fn, tensors, grad_out, dtype=None):
    """``[out, *grads]``: ``fn(*tensors)`` on fresh leaf copies (cast to ``dtype`` when given), then
    backward of ``grad_out``; the gradients of the tensors that are not None, in order."""
    leaves = [None if t is None else t.detach().to(dtype or t.dtype).clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(grad_out.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves if t is not None]


def tiny_dinat_config(md, depths, heads, dilations, **kwargs):
    """A small transformers ``DinatConfig`` (``md``: transformers' modeling_dinat module) whose weights
    convert into this package's ``DiNAT(embed_dim=16, mlp_ratio=2.0, kernel_size=5, layer_scale=0.5)``."""
    cfg = dict(embed_dim=16, depths=list(depths), num_heads=list(heads), kernel_size=5, dilations=dilations,
               mlp_ratio=2.0, layer_scale_init_value=0.5, drop_path_rate=0.0)
    cfg.update(kwargs)
    return md.DinatConfig(**cfg)
