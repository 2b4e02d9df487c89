"""Backend ``cpu``: the compiled C++ kernel (``dinat_backbone._C``, sources in ``dinat_backbone/csrc``).

Forward and backward in C++ over OpenMP, AVX-512 / AVX2 / generic code picked at run time. The
extension registers ``torch.ops.dinat.na2d_forward`` / ``na2d_backward``; this module adds their
fake (meta) implementations and autograd, so that autograd works and ``torch.compile`` traces the
op without graph breaks. The attention weights (``[B, X, K*K, Y, heads]``, float32 / float64) are
kept for backward only when an input requires grad.
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import List

import torch

from .backend import Backend, Call, Capabilities
from .inputs import compute_dtype
from .reference import differentiable_grads

NAME = "cpu"
__all__ = ["NAME", "BACKEND", "run", "kernel_available", "max_kernel_size", "gelu_backward", "layer_norm",
           "layer_norm_applies", "layer_norm_backward"]

try:  # the extension registers torch.ops.dinat.* on import
    from .. import _C
    _KERNEL_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the build
    _C = None
    # kept as text: the reason is formatted inside torch.compile'd calls, where torch 2.11's Dynamo
    # cannot call an exception's C repr; a build that is simply missing is said plainly (Python's
    # own message for it blames a circular import)
    built = importlib.util.find_spec(".._C", __package__) is not None
    _KERNEL_ERROR = repr(exc) if built else "not built (no dinat_backbone/_C*.so)"

_SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_warned_no_kernel = False


def kernel_available() -> bool:
    """True when the compiled CPU kernel was built and imports."""
    return _C is not None and hasattr(torch.ops, "dinat") and hasattr(torch.ops.dinat, "na2d_forward")


# read from the extension once (a pybind call inside a torch.compile'd region would break the graph)
_MAX_KERNEL_SIZE = int(_C.max_kernel_size()) if _C is not None else 0


def max_kernel_size() -> int:
    """Largest kernel size the compiled kernel handles (its stack buffers are sized by it; 0 without it)."""
    return _MAX_KERNEL_SIZE


def missing_kernel_reason() -> str:
    return (f"the compiled kernel dinat_backbone._C is not available ({_KERNEL_ERROR}); rebuild it with "
            "`pip install --no-build-isolation -e .`")


def warn_missing_kernel_once():
    """Automatic selection on CPU without the kernel falls to the far slower pure-PyTorch backend: say so once."""
    global _warned_no_kernel
    if not _warned_no_kernel:
        _warned_no_kernel = True
        warnings.warn(
            f"dinat_backbone: {missing_kernel_reason()}; using the much slower pure-PyTorch backend.",
            RuntimeWarning, stacklevel=4)


def _capabilities() -> Capabilities:
    return Capabilities(devices=("cpu",), dtypes=_SUPPORTED_DTYPES,
                        max_kernel_size=max_kernel_size() if kernel_available() else None)


def _extra_reasons(call: Call) -> List[str]:
    return [] if kernel_available() else [missing_kernel_reason()]


def _register_python_parts():
    @torch.library.register_fake("dinat::na2d_forward")
    def _na2d_forward_fake(query, key, value, rpb, kernel_size, dilation, scale, save_weights):
        B, X, Y, H, D = query.shape
        # the saved weights: bfloat16 when q, k, v are (the kernel's weights_dtype), else the compute dtype
        all_bf16 = all(t.dtype == torch.bfloat16 for t in (query, key, value))
        weights_dtype = torch.bfloat16 if all_bf16 else compute_dtype(query.dtype)
        out = query.new_empty((B, X, Y, H, D))
        if save_weights:
            weights = query.new_empty((B, X, kernel_size * kernel_size, Y, H), dtype=weights_dtype)
        else:
            weights = query.new_empty((0,), dtype=weights_dtype)
        return out, weights

    @torch.library.register_fake("dinat::na2d_backward")
    def _na2d_backward_fake(grad_out, query, key, value, weights, rpb, kernel_size, dilation, scale):
        B, X, Y, H, D = query.shape
        grad_qkv = query.new_empty((B, X, Y, 3, H, D))  # dq, dk, dv in one buffer (see _backward)
        drpb = rpb.new_empty(tuple(rpb.shape)) if rpb is not None else query.new_empty((0,))
        return grad_qkv, drpb

    def _setup_context(ctx, inputs, output):
        query, key, value, rpb, kernel_size, dilation, scale, save_weights = inputs
        _, weights = output
        ctx.save_for_backward(query, key, value, weights, rpb)
        ctx.params = (kernel_size, dilation, scale, save_weights)
        ctx.mark_non_differentiable(weights)
        # no zero-filled gradient for the weights output (never used): autograd would otherwise
        # materialise one as large as the attention weights on every backward call
        ctx.set_materialize_grads(False)

    def _backward(ctx, grad_out, _grad_weights):
        if grad_out is None:  # the output took no part in the loss (grads are not materialised)
            return (None,) * 8
        query, key, value, weights, rpb = ctx.saved_tensors
        kernel_size, dilation, scale, save_weights = ctx.params
        if torch.is_grad_enabled():  # create_graph=True: the kernel's backward is not differentiable
            grads = differentiable_grads(grad_out, (query, key, value, rpb), kernel_size, dilation, scale,
                                         ctx.needs_input_grad[:4])
            return (*grads, None, None, None, None)
        if not save_weights:
            raise RuntimeError(
                "na2d (cpu kernel): backward needs the attention weights, but the forward ran with "
                "save_weights=False (no input required grad, or grad mode was off); call na2d with "
                "inputs that require grad"
            )
        # dq, dk, dv as views of one [B, X, Y, 3, heads, head_dim] buffer: where q, k, v were unbound
        # from a qkv projection, ops.modules.split_qkv hands the buffer on as its gradient (no stack)
        grad_qkv, drpb = torch.ops.dinat.na2d_backward(
            grad_out, query, key, value, weights, rpb, kernel_size, dilation, scale
        )
        dq, dk, dv = grad_qkv.unbind(3)
        return dq, dk, dv, (drpb if rpb is not None else None), None, None, None, None

    torch.library.register_autograd("dinat::na2d_forward", _backward, setup_context=_setup_context)

    if _HAS_GELU_BACKWARD:
        @torch.library.register_fake("dinat::gelu_backward")
        def _gelu_backward_fake(grad, input):
            return (torch.empty_like(input, memory_format=torch.contiguous_format),
                    torch.empty_like(input, memory_format=torch.contiguous_format))

        @torch.library.register_fake("dinat::gelu_backward_")
        def _gelu_backward_inplace_fake(grad, input):
            return torch.empty_like(input, memory_format=torch.contiguous_format)

    if _HAS_LAYER_NORM:
        @torch.library.register_fake("dinat::layer_norm")
        def _layer_norm_fake(input, residual, weight, bias, eps):
            out = torch.empty_like(input, memory_format=torch.contiguous_format)
            total = torch.empty_like(out) if residual is not None else input.new_empty((0,))
            mean = input.new_empty(tuple(input.shape[:-1]) + (1,), dtype=torch.float32)
            return out, total, mean, torch.empty_like(mean)

        @torch.library.register_fake("dinat::layer_norm_backward")
        def _layer_norm_backward_fake(grad_out, input, mean, rstd, weight, output_mask):
            C = input.shape[-1]
            empty = input.new_empty((0,))
            grad_input = torch.empty_like(input, memory_format=torch.contiguous_format) if output_mask[0] else empty
            grad_weight = input.new_empty((C,), dtype=weight.dtype) if output_mask[1] and weight is not None else empty
            grad_bias = (input.new_empty((C,), dtype=torch.float32 if weight is None else weight.dtype)
                         if output_mask[2] else empty)
            return grad_input, grad_weight, grad_bias

        @torch.library.register_fake("dinat::layer_norm_backward_")
        def _layer_norm_backward_inplace_fake(grad_out, input, mean, rstd, weight, output_mask):
            return _layer_norm_backward_fake(grad_out, input, mean, rstd, weight, [False] + list(output_mask))[1:]


#: the extension has the lean MLP's GELU backward (an extension built before it lacks the op)
_HAS_GELU_BACKWARD = kernel_available() and hasattr(torch.ops.dinat, "gelu_backward")
#: ... and the block's LayerNorm (forward, with the residual add, and backward)
_HAS_LAYER_NORM = kernel_available() and hasattr(torch.ops.dinat, "layer_norm")
if kernel_available():
    _register_python_parts()


def _owned_for_overwrite(t: torch.Tensor) -> bool:
    """Whether an in-place kernel may overwrite ``t``: contiguous, and eager (a traced graph gets the
    functional op). The caller owns ``t`` (it made it and hands it on no further)."""
    from ..fused_linear import tracing  # here: fused_linear imports ops

    return t.is_contiguous() and not tracing()


def gelu_backward(grad: torch.Tensor, hidden: torch.Tensor, overwrite_grad: bool = False):
    """``(gelu(hidden), grad * gelu'(hidden))`` (exact GELU) in one pass of the compiled kernel, for
    bfloat16 CPU tensors (the memory-lean MLP's backward under CPU autocast,
    :mod:`dinat_backbone.lean`); None where it does not apply (other dtypes keep ATen's exact
    float32 / float64 formulas, and the kernel may be missing). Float32 arithmetic, erfc with
    relative error < 1.2e-7: within one bfloat16 rounding of ATen's gelu / gelu_backward.
    ``overwrite_grad``: the caller owns ``grad`` and lets the kernel write the result over it
    (``torch.ops.dinat.gelu_backward_``; the second result is then ``grad`` itself) where it is
    contiguous and nothing is tracing: no second fresh tensor of the MLP's width."""
    if (_HAS_GELU_BACKWARD and hidden.device.type == "cpu" and hidden.dtype == torch.bfloat16
            and grad.dtype == torch.bfloat16 and grad.shape == hidden.shape):
        if overwrite_grad and _owned_for_overwrite(grad):
            return torch.ops.dinat.gelu_backward_(grad, hidden), grad
        return torch.ops.dinat.gelu_backward(grad, hidden)
    return None


def layer_norm_applies(x: torch.Tensor, weight, bias, residual=None) -> bool:
    """Whether :func:`layer_norm` runs the kernel on these tensors: bfloat16 CPU tensors (the kernel
    also computes float32, tested, but there it is no faster than ATen's: ``tools/benchmark_layer_norm.py
    --dtype float32``), weight / bias bfloat16 or float32 over x's last axis, a residual like x; the
    kernel built."""
    if not (_HAS_LAYER_NORM and x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.dim() >= 1
            and x.shape[-1] > 0):
        return False
    for p in (weight, bias):
        if p is not None and (p.device.type != "cpu" or p.shape != x.shape[-1:]
                              or p.dtype not in (x.dtype, torch.float32)):
            return False
    return residual is None or (residual.device.type == "cpu" and residual.dtype == x.dtype
                                and residual.shape == x.shape)


def layer_norm(x: torch.Tensor, weight, bias, eps: float, residual=None):
    """LayerNorm over the last axis of a bfloat16 CPU tensor, of ``x + residual`` when given
    (the sum rounded to x's dtype, as the plain add stores it), in one pass of the compiled kernel:
    ``(out, sum, mean, rstd)`` (sum empty without a residual; mean / rstd float32 ``[..., 1]``, as
    ``torch.native_layer_norm``'s). None where it does not apply (:func:`layer_norm_applies`); the
    caller runs ATen's then. Float32 statistics (two passes over each row); matches ATen's output
    within one rounding (bit for bit at DiNAT's shapes in bfloat16 here). No autograd: callers wrap
    it (dinat_backbone.fused_norm, dinat_backbone.lean)."""
    if not layer_norm_applies(x, weight, bias, residual):
        return None
    return torch.ops.dinat.layer_norm(x, residual, weight, bias, float(eps))


def layer_norm_backward(grad_out: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight,
                        output_mask, overwrite_grad: bool = False):
    """Gradients of :func:`layer_norm` from its mean / rstd: ``(grad_x, grad_weight, grad_bias)``, None
    where ``output_mask`` says not wanted. grad_weight / grad_bias summed in float64 over float32
    partial sums (ATen's bfloat16 CPU backward rounds them to bfloat16: off by ~1e-1 relative at
    60800 rows). ``overwrite_grad``: the caller owns ``grad_out`` and lets the kernel write grad_x
    over it (``torch.ops.dinat.layer_norm_backward_``; grad_x is then ``grad_out`` itself) where it
    is contiguous, shaped like x and nothing is tracing."""
    mask = [bool(m) for m in output_mask]
    if overwrite_grad and mask[0] and grad_out.shape == x.shape and _owned_for_overwrite(grad_out):
        grad_weight, grad_bias = torch.ops.dinat.layer_norm_backward_(grad_out, x, mean, rstd, weight, mask[1:])
        grads = (grad_out, grad_weight, grad_bias)
    else:
        grads = torch.ops.dinat.layer_norm_backward(grad_out, x, mean, rstd, weight, mask)
    return tuple(g if wanted else None for g, wanted in zip(grads, mask))


def run(query, key, value, rpb, scale, call: Call):
    out, _ = torch.ops.dinat.na2d_forward(query, key, value, rpb, call.kernel_size, call.dilation, float(scale),
                                          call.needs_grad)
    return out


BACKEND = Backend(NAME, _capabilities, run, _extra_reasons)
