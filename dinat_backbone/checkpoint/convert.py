"""Format conversion: any published checkpoint layout (a mapping) to the native keys, no files.

See :mod:`dinat_backbone.checkpoint` for the layouts.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional

import torch

_logger = logging.getLogger("dinat_backbone.checkpoint")

# a key that every model of each layout has; what precedes it is the layout's prefix
_NATIVE_ANCHOR = "patch_embed.proj.0.weight"  # DiNAT / NAT: two-convolution tokenizer
_NATIVE_S_ANCHOR = "patch_embed.proj.weight"  # DiNAT_s: Swin patch embedding
_HF_ANCHOR = "embeddings.patch_embeddings.projection.0.weight"
_WRAPPER_KEYS = ("state_dict", "model", "module")
# mmengine saves {'state_dict': ...}, a DDP script {'model': {'module': ...}}: real files nest a few
_MAX_WRAPPER_DEPTH = 8

# HF transformers -> native, applied to the key after the model prefix
_HF_RULES = [
    (re.compile(r"^embeddings\.patch_embeddings\.projection\.([01])\."), r"patch_embed.proj.\1."),
    (re.compile(r"^embeddings\.norm\."), "patch_embed.norm."),
    (re.compile(r"^encoder\.levels\.(\d+)\.downsample\."), r"levels.\1.downsample."),
    (re.compile(r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.attention\.self\.rpb$"), r"levels.\1.blocks.\2.attn.rpb"),
    (re.compile(r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.attention\.output\.dense\."),
     r"levels.\1.blocks.\2.attn.proj."),
    (re.compile(r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.layernorm_before\."), r"levels.\1.blocks.\2.norm1."),
    (re.compile(r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.layernorm_after\."), r"levels.\1.blocks.\2.norm2."),
    (re.compile(r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.intermediate\.dense\."), r"levels.\1.blocks.\2.mlp.fc1."),
    (re.compile(r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.output\.dense\."), r"levels.\1.blocks.\2.mlp.fc2."),
    (re.compile(r"^hidden_states_norms\.stem\."), "norm_stem."),
]
_HF_QKV = re.compile(r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
_HF_LAYER_SCALE = re.compile(r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.layer_scale_parameters$")
_HF_STAGE_NORM = re.compile(r"^hidden_states_norms\.stage(\d+)\.(.+)$")
# classification-only parts (not part of a backbone): HF DinatModel's final norm and pooler
_HF_CLASSIFIER_ONLY = re.compile(r"^(layernorm|pooler)\.")
# original classification model: the head and the final norm
_NATIVE_CLASSIFIER_ONLY = re.compile(r"^(head|norm)\.")
# the two families' stage keys in the native layout
_FAMILY_STAGE_KEYS = {"DiNAT": re.compile(r"^levels\.\d+\.blocks\.\d+\."),
                      "DiNAT_s": re.compile(r"^layers\.\d+\.blocks\.\d+\.")}
_FAMILY_LAYOUTS = {
    "DiNAT": "DiNAT / NAT: two-convolution tokenizer patch_embed.proj.0/1, stages levels.i.blocks.j",
    "DiNAT_s": "DiNAT_s, the Swin layout: patch embedding patch_embed.proj, stages layers.i.blocks.j, patch merging",
}


def _unwrap(obj, source: str = "the checkpoint", caller: str = "convert_checkpoint") -> Mapping:
    """Strip mmengine / training-script wrappers: ``{'state_dict': ...}``, ``{'model': ...}``, ...

    Terminates on any input: a wrapper seen before (``d['state_dict'] = d`` pickles and loads fine)
    or more than :data:`_MAX_WRAPPER_DEPTH` nested wrappers is a ValueError naming the key path.
    """
    path, seen = [], set()
    while isinstance(obj, Mapping):
        seen.add(id(obj))
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and not isinstance(inner, torch.Tensor):
                path.append(key)
                if id(inner) in seen:
                    raise ValueError(
                        f"{caller}: {source} is malformed: the wrapper at {'.'.join(path)} is one that "
                        f"encloses it (a cycle), so it holds no state dict; write the weights again, e.g. "
                        f"torch.save(model.state_dict(), path)")
                if len(path) > _MAX_WRAPPER_DEPTH:
                    raise ValueError(
                        f"{caller}: {source} nests more than {_MAX_WRAPPER_DEPTH} wrappers "
                        f"({'.'.join(path[:4])}...); a checkpoint has at most a few ('state_dict', 'model', "
                        f"'module'); pass the state dict itself")
                obj = inner
                break
        else:
            return obj
    raise TypeError(f"convert_checkpoint: expected a state dict (a mapping of tensors), got {type(obj).__name__}")


def _strip_module_prefix(state: Mapping) -> Dict[str, torch.Tensor]:
    """DDP / DataParallel wrap every key in ``module.`` (possibly more than once)."""
    out = OrderedDict()
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def _find_prefix(keys, anchor: str, logger: logging.Logger = _logger) -> Optional[str]:
    """Prefix before ``anchor`` (e.g. '', 'backbone.', 'dinat.'), preferring '' and 'backbone.'."""
    prefixes = [k[: -len(anchor)] for k in keys
                if k.endswith(anchor) and (k == anchor or k[: -len(anchor)].endswith("."))]
    if not prefixes:
        return None
    prefixes.sort(key=lambda p: (p != "", p != "backbone.", len(p), p))
    if len(prefixes) > 1:
        logger.warning("convert_checkpoint: several models in the checkpoint (prefixes %s); using %r",
                        prefixes, prefixes[0])
    return prefixes[0]


def _strip_prefix(state: Mapping, prefix: str) -> Dict[str, torch.Tensor]:
    """The keys under ``prefix``, with it removed (the one place a prefix is cut off)."""
    return OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))


def _select_prefix(state: Mapping, prefix: str, logger: logging.Logger) -> Dict[str, torch.Tensor]:
    """Keys under ``prefix`` with it removed; the rest (detector neck / heads, classifier) is logged."""
    if not prefix:
        return OrderedDict(state)
    out = _strip_prefix(state, prefix)
    others = sorted({k.split(".", 1)[0] for k in state if not k.startswith(prefix)})
    if others:
        logger.info("convert_checkpoint: kept the backbone under %r; ignored the other parts %s", prefix, others)
    return out


def _convert_hf(state: Mapping[str, torch.Tensor], logger: logging.Logger) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = OrderedDict()
    qkv: Dict[tuple, Dict[str, torch.Tensor]] = {}
    dropped = []
    for key, value in state.items():
        m = _HF_QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(2), m.group(4)), {})[m.group(3)] = value
            continue
        m = _HF_LAYER_SCALE.match(key)
        if m:
            if value.dim() != 2 or value.shape[0] != 2:
                raise ValueError(f"convert_checkpoint: {key} should have shape [2, dim], got {list(value.shape)}")
            base = f"levels.{m.group(1)}.blocks.{m.group(2)}."
            out[base + "gamma1"], out[base + "gamma2"] = value[0].clone(), value[1].clone()
            continue
        m = _HF_STAGE_NORM.match(key)
        if m:
            out[f"norm{int(m.group(1)) - 1}.{m.group(2)}"] = value
            continue
        if _HF_CLASSIFIER_ONLY.match(key):
            dropped.append(key)
            continue
        for pattern, repl in _HF_RULES:
            new_key, n = pattern.subn(repl, key)
            if n:
                out[new_key] = value
                break
        else:
            out[key] = value  # unknown: kept under its name so that loading reports it as unexpected
    for (level, layer, kind), parts in sorted(qkv.items()):
        missing = [p for p in ("query", "key", "value") if p not in parts]
        if missing:
            raise ValueError(
                f"convert_checkpoint: HF layer encoder.levels.{level}.layers.{layer} has no attention.self."
                f"{'/'.join(missing)}.{kind}; the checkpoint is incomplete")
        # the native qkv Linear's output is [q; k; v] stacked along the output features
        out[f"levels.{level}.blocks.{layer}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0)
    if dropped:
        logger.info("convert_checkpoint: dropped the HF classification-only weights %s", dropped)
    return out


def _convert_native(state: Mapping[str, torch.Tensor], logger: logging.Logger) -> Dict[str, torch.Tensor]:
    out = OrderedDict()
    dropped = []
    for key, value in state.items():
        if _NATIVE_CLASSIFIER_ONLY.match(key):
            dropped.append(key)  # classification head and final norm: not part of the backbone
        else:
            out[key] = value
    if dropped:
        logger.info("convert_checkpoint: dropped the classification-only weights %s", dropped)
    return out


def convert_checkpoint(obj, logger: Optional[logging.Logger] = None) -> Dict[str, torch.Tensor]:
    """Native DiNAT state dict from any supported checkpoint object (see the module docstring).

    Keys it cannot place are kept under their names, so that loading reports them as unexpected.
    """
    logger = logger or _logger
    state = _strip_module_prefix(_unwrap(obj))
    hf_prefix = _find_prefix(state, _HF_ANCHOR, logger)
    native_prefix = _find_prefix(state, _NATIVE_ANCHOR, logger)
    if native_prefix is None:
        native_prefix = _find_prefix(state, _NATIVE_S_ANCHOR, logger)
    if hf_prefix is not None and (native_prefix is None or len(hf_prefix) <= len(native_prefix)):
        logger.debug("convert_checkpoint: HF transformers layout, prefix %r", hf_prefix)
        return _convert_hf(_select_prefix(state, hf_prefix, logger), logger)
    if native_prefix is not None:
        logger.debug("convert_checkpoint: original layout, prefix %r", native_prefix)
        return _convert_native(_select_prefix(state, native_prefix, logger), logger)
    # the last resort, a partial state dict (no patch embedding key to anchor the layout): only a prefix
    # every key shares is stripped, and what was decided is logged (the keys are otherwise used as they are)
    anchors = (_NATIVE_ANCHOR, _NATIVE_S_ANCHOR, _HF_ANCHOR)
    for prefix in ("backbone.", "dinat."):
        if state and all(k.startswith(prefix) for k in state):
            logger.warning("convert_checkpoint: no patch embedding key (%s) in the checkpoint, so its layout is "
                           "guessed: every key starts with %r, which was stripped (a partial state dict?)",
                           " / ".join(anchors), prefix)
            state = _strip_prefix(state, prefix)
    if any(".layers." in k and k.startswith("encoder.") for k in state):
        logger.warning("convert_checkpoint: no patch embedding key in the checkpoint; its encoder.*.layers.* keys "
                       "were read as the HF transformers layout")
        return _convert_hf(state, logger)
    logger.warning("convert_checkpoint: no patch embedding key (%s) in the checkpoint: its %d keys are used as "
                   "they are (first: %s)", " / ".join(anchors), len(state), ", ".join(list(state)[:3]))
    return OrderedDict(state)


def checkpoint_family(state: Mapping) -> Optional[str]:
    """'DiNAT' (DiNAT / NAT) or 'DiNAT_s' from the keys of a native state dict (what
    :func:`convert_checkpoint` returns, or a model's ``state_dict()``); None when neither or both."""
    found = {family for family, pattern in _FAMILY_STAGE_KEYS.items() if any(pattern.match(k) for k in state)}
    return found.pop() if len(found) == 1 else None
