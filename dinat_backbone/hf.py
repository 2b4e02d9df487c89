"""HF transformers' DiNAT on this package's neighbourhood attention.

transformers' ``models/dinat/modeling_dinat.py`` (``DinatModel``, ``DinatForImageClassification``,
``DinatBackbone``, and so every model that builds its backbone with ``load_backbone`` from a
``DinatConfig``: OneFormer, UperNet, Mask2Former) calls ``natten.functional.natten2dqkrpb`` /
``natten2dav``, which NATTEN removed in 0.17.5; NATTEN <= 0.17.4 has no wheels past torch 2.5, and
``requires_backends(self, ["natten"])`` refuses to build the models without it. ::

    import dinat_backbone.hf
    dinat_backbone.hf.enable()   # before building / loading the model; returns what runs

:func:`enable` points that module at this package: its ``NeighborhoodAttention.forward`` runs the
fused :func:`dinat_backbone.ops.na2d` (compiled CPU kernel, Triton on CUDA), and the split
:func:`~dinat_backbone.ops.natten2dqkrpb` / :func:`~dinat_backbone.ops.natten2dav` only when the
attention weights are requested (``output_attentions=True``); the module's ``natten2dqkrpb`` /
``natten2dav`` names become the split ops, and its ``requires_backends`` stops asking for natten
(every other backend is still checked). On CPU inference the query / key / value projections (one
GEMM), ``DinatIntermediate`` (dense + exact GELU) and ``DinatOutput``'s dense run on oneDNN's fused
Linear like the native model's (:mod:`dinat_backbone.fused_linear`; same values, and the modules
themselves wherever hooks, wrappers, autograd or tracing are involved). Everything else is
transformers' own code, including
``DinatLayer.maybe_pad`` (maps smaller than ``kernel_size * dilation`` are zero-padded after the
layer norm and cropped back), so the outputs are those transformers computed on NATTEN <= 0.17.4.

transformers 5.x rewrote ``NeighborhoodAttention.forward``'s head split for 4-D attention
(``.view(...).transpose(1, 2)`` of a ``[batch, X, Y, heads, head_dim]`` tensor, where 4.x permuted
to ``[batch, heads, X, Y, head_dim]``), so on 5.x the forward fails with any natten; the
replacement forward here is 4.x's computation.

A real NATTEN <= 0.17.4, where one is installed, is left to run unless ``enable(replace=True)``
(on 5.x the forward is still replaced, calling natten's two ops). This module imports transformers
only when :func:`enable` is called; ``import dinat_backbone`` never does.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import math
from typing import Optional

import torch

from .fused_linear import hook_free, linear, linear_gelu, linear_weights
from .ops import na2d, natten2dav, natten2dqkrpb

__all__ = ["enable", "disable", "status", "BridgeStatus", "TESTED_TRANSFORMERS"]

logger = logging.getLogger("dinat_backbone.hf")

#: transformers releases whose modeling_dinat this module was tested against.
TESTED_TRANSFORMERS = ("4.46.3", "5.24.0")
MODELING_DINAT = "transformers.models.dinat.modeling_dinat"
_INSTALL_HINT = f"pip install transformers=={TESTED_TRANSFORMERS[-1]}"

# name -> the module's original object, saved at the first patch; empty when nothing is patched
_ORIGINALS: dict = {}
_STATUS: Optional["BridgeStatus"] = None


@dataclasses.dataclass(frozen=True)
class BridgeStatus:
    """What runs transformers' neighbourhood attention after :func:`enable`."""
    #: 'dinat_backbone' (this package's ops) or 'natten' (an installed NATTEN <= 0.17.4)
    runs: str
    transformers_version: str
    #: the installed natten's version, None without natten
    natten_version: Optional[str]
    #: True when modeling_dinat's NeighborhoodAttention.forward is this module's
    forward_replaced: bool
    description: str

    def __str__(self) -> str:
        return self.description


def _version(dist: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _import_modeling_dinat():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "dinat_backbone.hf needs HF transformers, which is not installed: "
            f"{_INSTALL_HINT} (tested with {', '.join(TESTED_TRANSFORMERS)})") from e
    try:
        return importlib.import_module(MODELING_DINAT)
    except ImportError as e:
        if "natten" not in str(e):
            raise ImportError(f"dinat_backbone.hf: transformers {transformers.__version__} has no importable "
                              f"{MODELING_DINAT} ({e}); {_INSTALL_HINT}") from e
        natten_error = e
    # A NATTEN >= 0.17.5 is installed: modeling_dinat's `from natten.functional import natten2dav, natten2dqkrpb`
    # fails. Import it the way transformers does without natten (its placeholders are replaced below).
    import transformers.utils as hf_utils

    saved = hf_utils.is_natten_available
    hf_utils.is_natten_available = lambda: False
    try:
        module = importlib.import_module(MODELING_DINAT)
    finally:
        hf_utils.is_natten_available = saved
    logger.info("dinat_backbone.hf: the installed natten %s lacks natten2dqkrpb / natten2dav (%s); "
                "imported %s without it", _version("natten"), natten_error, MODELING_DINAT)
    return module


def _original(md, name):
    if name in _ORIGINALS:
        return _ORIGINALS[name]
    return md.NeighborhoodAttention.forward if name == "forward" else getattr(md, name)


def _check_layout(md):
    """RuntimeError naming what is missing when modeling_dinat is not the layout this bridge knows."""
    import transformers

    problems = [f"no {name}" for name in ("NeighborhoodAttention", "DinatLayer", "DinatIntermediate", "DinatOutput",
                                          "natten2dqkrpb", "natten2dav", "requires_backends") if not hasattr(md, name)]
    if not problems:
        forward = _original(md, "forward")
        if list(inspect.signature(forward).parameters) != ["self", "hidden_states", "output_attentions"]:
            problems.append(f"NeighborhoodAttention.forward{inspect.signature(forward)}")
        init = list(inspect.signature(md.NeighborhoodAttention.__init__).parameters)
        if init[:6] != ["self", "config", "dim", "num_heads", "kernel_size", "dilation"]:
            problems.append(f"NeighborhoodAttention.__init__{inspect.signature(md.NeighborhoodAttention.__init__)}")
        if not hasattr(md.DinatLayer, "maybe_pad"):
            problems.append("no DinatLayer.maybe_pad")
    if problems:
        raise RuntimeError(
            f"dinat_backbone.hf: transformers {transformers.__version__}'s {MODELING_DINAT} is not a layout this "
            f"bridge knows ({'; '.join(problems)}); it was written for transformers "
            f"{' / '.join(TESTED_TRANSFORMERS)}: {_INSTALL_HINT}, or report the version")


def _is_placeholder(fn, md) -> bool:
    """transformers' stand-in for natten's op when natten is not importable (it raises)."""
    return getattr(fn, "__module__", None) == md.__name__


def _requires_backends_without_natten(original):
    def requires_backends(obj, backends):
        backends = list(backends) if isinstance(backends, (list, tuple)) else [backends]
        others = [b for b in backends if b != "natten"]  # dinat_backbone.hf serves natten's ops
        if others:
            original(obj, others)

    requires_backends.__wrapped__ = original
    return requires_backends


def _split_heads(x, shape):
    return x.view(shape).permute(0, 3, 1, 2, 4)  # [batch, heads, X, Y, head_dim]


def _project_qkv(attention, hidden_states):
    """query, key, value ``[batch, X, Y, heads * head_dim]``: one GEMM with the three weights
    concatenated (as the native model's qkv Linear) while they are plain Linears; otherwise (PEFT /
    LoRA wrappers, hooks, quantised layers) the modules themselves run, so nothing they add is skipped."""
    projections = (attention.query, attention.key, attention.value)
    plain = all(type(m) is torch.nn.Linear for m in projections) and hook_free(*projections)
    if not plain or len({m.bias is None for m in projections}) != 1:
        return tuple(m(hidden_states) for m in projections)
    weight = torch.cat([m.weight for m in projections])
    bias = None if attention.query.bias is None else torch.cat([m.bias for m in projections])
    # oneDNN's fused primitive on CPU inference, as the native model's qkv (dinat_backbone.fused_linear)
    return linear_weights(hidden_states, weight, bias).chunk(3, dim=-1)


def _make_forward(qk_rpb, av, fused: bool):
    """``NeighborhoodAttention.forward``: transformers 4.x's computation; the fused op unless the
    weights are requested (or ``fused`` is False: a natten that is left to run)."""

    def forward(self, hidden_states: torch.Tensor, output_attentions: Optional[bool] = False):
        batch, height, width, _ = hidden_states.shape
        heads, head_dim = self.num_attention_heads, self.attention_head_size
        shape = (batch, height, width, heads, head_dim)
        query, key, value = _project_qkv(self, hidden_states)
        if fused and not output_attentions:
            attn_drop = self.dropout.p if self.training else 0.0
            context = na2d(query.view(shape), key.view(shape), value.view(shape), self.kernel_size, self.dilation,
                           rpb=self.rpb, scale=head_dim ** -0.5, attn_drop=attn_drop)
            return (context.reshape(batch, height, width, heads * head_dim),)
        query = _split_heads(query, shape) / math.sqrt(head_dim)
        scores = qk_rpb(query, _split_heads(key, shape), self.rpb, self.kernel_size, self.dilation)
        probs = self.dropout(torch.nn.functional.softmax(scores, dim=-1))
        context = av(probs, _split_heads(value, shape), self.kernel_size, self.dilation)
        context = context.permute(0, 2, 3, 1, 4).reshape(batch, height, width, heads * head_dim)
        return (context, probs) if output_attentions else (context,)

    forward.__dinat_backbone_bridge__ = True
    return forward


def _intermediate_forward(self, hidden_states):
    """``DinatIntermediate.forward`` (dense, then the activation) with dense + exact GELU on oneDNN's
    fused primitive where :mod:`dinat_backbone.fused_linear` applies, as the native model's fc1."""
    return linear_gelu(hidden_states, self.dense, self.intermediate_act_fn)


def _output_forward(self, hidden_states):
    """``DinatOutput.forward`` (dense, dropout) with the bias fused, as the native model's fc2."""
    return self.dropout(linear(hidden_states, self.dense))


def _save_originals(md):
    if not _ORIGINALS:
        _ORIGINALS.update(natten2dqkrpb=md.natten2dqkrpb, natten2dav=md.natten2dav,
                          requires_backends=md.requires_backends, forward=md.NeighborhoodAttention.forward,
                          intermediate_forward=md.DinatIntermediate.forward, output_forward=md.DinatOutput.forward)


def enable(replace: bool = False) -> BridgeStatus:
    """Make transformers' DiNAT models run on this package's neighbourhood attention; call it before
    building or loading a model (models built earlier run it too: the class is patched). Idempotent.

    ``replace``: also when a real NATTEN <= 0.17.4 is installed (otherwise natten is left to run).
    Returns (and logs at INFO level) a :class:`BridgeStatus` saying what runs.
    Raises ImportError when transformers is missing, RuntimeError when its modeling_dinat is a
    layout this bridge does not know; both name the fix.
    """
    global _STATUS
    md = _import_modeling_dinat()
    _check_layout(md)
    import transformers

    original_qk = _original(md, "natten2dqkrpb")
    natten_ops = not _is_placeholder(original_qk, md)  # natten's own functions were importable
    natten_version = _version("natten")
    # transformers 4.x splits heads with transpose_for_scores ([batch, heads, X, Y, head_dim]); 5.x's forward does not
    hf_forward_works = hasattr(md.NeighborhoodAttention, "transpose_for_scores")
    version = transformers.__version__
    if natten_ops and not replace:
        disable()
        if hf_forward_works:
            description = (f"natten {natten_version} runs transformers {version}'s DiNAT (left alone; "
                           "dinat_backbone.hf.enable(replace=True) switches to dinat_backbone's ops)")
        else:
            _save_originals(md)
            md.NeighborhoodAttention.forward = _make_forward(original_qk, _ORIGINALS["natten2dav"], fused=False)
            description = (f"natten {natten_version} runs transformers {version}'s DiNAT; its "
                           "NeighborhoodAttention.forward (which mislays the heads on 5.x) is replaced by 4.x's "
                           "computation (dinat_backbone.hf.enable(replace=True) switches to dinat_backbone's ops)")
        _STATUS = BridgeStatus("natten", version, natten_version, not hf_forward_works, description)
    else:
        _save_originals(md)
        md.natten2dqkrpb, md.natten2dav = natten2dqkrpb, natten2dav
        md.requires_backends = _requires_backends_without_natten(_ORIGINALS["requires_backends"])
        md.NeighborhoodAttention.forward = _make_forward(natten2dqkrpb, natten2dav, fused=True)
        md.DinatIntermediate.forward, md.DinatOutput.forward = _intermediate_forward, _output_forward
        replaced = f" (replacing natten {natten_version})" if natten_ops else ""
        description = (f"dinat_backbone runs transformers {version}'s DiNAT{replaced}: fused na2d, and "
                       "natten2dqkrpb / natten2dav when attention weights are requested")
        _STATUS = BridgeStatus("dinat_backbone", version, natten_version, True, description)
    logger.info("dinat_backbone.hf: %s", description)
    return _STATUS


def disable() -> None:
    """Undo :func:`enable`: modeling_dinat's original functions and forward (a no-op when not enabled)."""
    global _STATUS
    if _ORIGINALS:
        md = importlib.import_module(MODELING_DINAT)
        md.natten2dqkrpb = _ORIGINALS["natten2dqkrpb"]
        md.natten2dav = _ORIGINALS["natten2dav"]
        md.requires_backends = _ORIGINALS["requires_backends"]
        md.NeighborhoodAttention.forward = _ORIGINALS["forward"]
        md.DinatIntermediate.forward = _ORIGINALS["intermediate_forward"]
        md.DinatOutput.forward = _ORIGINALS["output_forward"]
        _ORIGINALS.clear()
    _STATUS = None


def status() -> Optional[BridgeStatus]:
    """What :func:`enable` set up (None when it was not called, or after :func:`disable`)."""
    return _STATUS
