"""Checkpoint conversion and loading for :class:`dinat_backbone.DiNAT` / ``NAT`` / ``DiNAT_s``.

:func:`convert_checkpoint` turns every published layout into the native keys (see
``dinat_backbone/dinat.py`` and ``dinat_backbone/dinat_s.py``), detecting the format from the keys:

* original ImageNet classification models of both families (raw state dict; ``head.*`` and the
  final ``norm.*`` are dropped, the output norms ``norm0..3`` are then missing and keep their init);
* original COCO / ADE20K detector and segmentor checkpoints (``{'state_dict': ...}`` with
  ``backbone.`` prefix; only the backbone is kept), and the authors' detectron2 Mask2Former models
  (``{'model': {'backbone.…', 'sem_seg_head.…'}, 'iteration': …}``);
* HF transformers ``DinatModel``, ``DinatForImageClassification`` (``dinat.`` prefix) and
  ``DinatBackbone`` (also inside e.g. a ``backbone.`` prefix);
* mmengine wrappers (``state_dict`` / ``model``) and DDP ``module.`` prefixes, around any of the
  above.

:func:`load_pretrained` loads a path, URL or dict into a model through it; a DiNAT_s file given
to a DiNAT / NAT model (or the reverse) is an error naming both families
(:func:`checkpoint_family` tells them apart).

Official checkpoints (ImageNet; the classification head is dropped on conversion)::

    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_tiny_in1k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_small_in1k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_base_in1k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_384.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_{tiny,small,base}_in1k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_large_in1k_{224,384}.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth
"""
from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["convert_checkpoint", "load_pretrained", "resize_rpb", "checkpoint_family", "CHECKPOINT_URLS"]

_logger = logging.getLogger(__name__)

_BASE_URL = "https://shi-labs.com/projects/dinat/checkpoints"
CHECKPOINT_URLS = {
    "dinat_mini_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_mini_in1k_224.pth",
    "dinat_tiny_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_tiny_in1k_224.pth",
    "dinat_small_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_small_in1k_224.pth",
    "dinat_base_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_base_in1k_224.pth",
    "dinat_large_in22k_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_large_in22k_in1k_224.pth",
    "dinat_large_in22k_in1k_384": f"{_BASE_URL}/imagenet1k/dinat_large_in22k_in1k_384.pth",
    "dinat_large_in22k_224": f"{_BASE_URL}/imagenet22k/dinat_large_in22k_224.pth",
    # DiNAT_s (names as in the authors' classification/dinats.py and detection / segmentation configs)
    "dinat_s_tiny_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_s_tiny_in1k_224.pth",
    "dinat_s_small_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_s_small_in1k_224.pth",
    "dinat_s_base_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_s_base_in1k_224.pth",
    "dinat_s_large_in1k_224": f"{_BASE_URL}/imagenet1k/dinat_s_large_in1k_224.pth",
    "dinat_s_large_in1k_384": f"{_BASE_URL}/imagenet1k/dinat_s_large_in1k_384.pth",
    "dinat_s_large_in22k_224": f"{_BASE_URL}/imagenet22k/dinat_s_large_in22k_224.pth",
}

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


def _find_prefix(keys, anchor: str) -> Optional[str]:
    """Prefix before ``anchor`` (e.g. '', 'backbone.', 'dinat.'), preferring '' and 'backbone.'."""
    prefixes = [k[: -len(anchor)] for k in keys
                if k.endswith(anchor) and (k == anchor or k[: -len(anchor)].endswith("."))]
    if not prefixes:
        return None
    prefixes.sort(key=lambda p: (p != "", p != "backbone.", len(p), p))
    if len(prefixes) > 1:
        _logger.warning("convert_checkpoint: several models in the checkpoint (prefixes %s); using %r",
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
    hf_prefix = _find_prefix(state, _HF_ANCHOR)
    native_prefix = _find_prefix(state, _NATIVE_ANCHOR)
    if native_prefix is None:
        native_prefix = _find_prefix(state, _NATIVE_S_ANCHOR)
    if hf_prefix is not None and (native_prefix is None or len(hf_prefix) <= len(native_prefix)):
        logger.debug("convert_checkpoint: HF transformers layout, prefix %r", hf_prefix)
        return _convert_hf(_select_prefix(state, hf_prefix, logger), logger)
    if native_prefix is not None:
        logger.debug("convert_checkpoint: original layout, prefix %r", native_prefix)
        return _convert_native(_select_prefix(state, native_prefix, logger), logger)
    # a partial state dict (no patch embedding): only strip a prefix every key shares
    for prefix in ("backbone.", "dinat."):
        if state and all(k.startswith(prefix) for k in state):
            state = _strip_prefix(state, prefix)
    if any(".layers." in k and k.startswith("encoder.") for k in state):
        return _convert_hf(state, logger)
    return OrderedDict(state)


def checkpoint_family(state: Mapping) -> Optional[str]:
    """'DiNAT' (DiNAT / NAT) or 'DiNAT_s' from the keys of a native state dict (what
    :func:`convert_checkpoint` returns, or a model's ``state_dict()``); None when neither or both."""
    found = {family for family, pattern in _FAMILY_STAGE_KEYS.items() if any(pattern.match(k) for k in state)}
    return found.pop() if len(found) == 1 else None


def _check_family(model: nn.Module, state: Mapping) -> None:
    """A DiNAT_s file into a DiNAT / NAT model or the reverse: every block key would be missing."""
    theirs, ours = checkpoint_family(state), checkpoint_family(model.state_dict())
    if theirs and ours and theirs != ours:
        raise ValueError(
            f"load_pretrained: the checkpoint is a {theirs} backbone ({_FAMILY_LAYOUTS[theirs]}), but the model "
            f"({type(model).__name__}) is {_FAMILY_LAYOUTS[ours]}; load it into {theirs}(arch=...) instead "
            f"(type='{theirs}' in an mm config)")


def resize_rpb(rpb: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a relative-positional-bias table ``[heads, S, S]`` to ``[heads, size, size]`` (bicubic)."""
    resized = F.interpolate(rpb[None].float(), size=(size, size), mode="bicubic", align_corners=False)
    return resized[0].to(rpb.dtype)


# what torch.save writes: a zip archive (torch >= 1.6) or a pickle (the legacy format, protocol 2)
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")


def _describe(source) -> str:
    return "the checkpoint (a dict)" if isinstance(source, Mapping) else str(source)


def _file_head(path: str) -> Optional[bytes]:
    """The first bytes of a local file (None for a URL or a path that is not a file)."""
    import os

    if not os.path.isfile(path):
        return None  # torch.load's FileNotFoundError / IsADirectoryError already name the path
    with open(path, "rb") as f:
        return f.read(16)


def _check_not_empty(path: str):
    """A zero-byte file (an interrupted download or save) fails inside torch.load with an
    ``EOFError`` without a message."""
    if _file_head(path) == b"":
        raise ValueError(f"load_pretrained: {path} is empty (0 bytes), not a checkpoint; the download or the "
                         "save that wrote it was probably interrupted: fetch or write it again")


def _foreign_head(path: str) -> Optional[bytes]:
    """The first bytes of a local file that torch.save did not write (text, an HTML error page
    saved instead of the checkpoint); None for a torch file, a URL or a missing path."""
    head = _file_head(path)
    return head if head is not None and not head.startswith(_TORCH_SAVE_MAGIC) else None


def _unreadable(source: str, exc: BaseException) -> RuntimeError:
    """The error for a file torch.load cannot parse: a foreign file fails in the unpickler with an
    ``IndexError`` / ``KeyError`` / ``UnpicklingError``, a cut-off one in the zip reader."""
    head = _foreign_head(source)
    if head is not None:
        what = (f"is not a PyTorch checkpoint (torch.save writes a zip archive or a pickle; the file starts "
                f"with {head!r}): check the path")
    else:
        what = "is not a readable checkpoint (truncated or corrupted?): fetch or write it again"
    return RuntimeError(f"load_pretrained: {source} {what}; torch.load raised {type(exc).__name__}: {exc}")


def _read_file(source, map_location="cpu"):
    if isinstance(source, Mapping):
        return source
    source = str(source)
    is_url = source.startswith(("http://", "https://"))
    if not is_url:
        _check_not_empty(source)
    if source.endswith(".safetensors"):  # HF hub files
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise RuntimeError(f"load_pretrained: reading {source} needs `pip install safetensors`") from exc
        if is_url:
            raise ValueError(f"load_pretrained: download {source} first and pass the local path")
        return load_file(source, device=str(map_location))
    try:
        if is_url:
            return torch.hub.load_state_dict_from_url(source, map_location=map_location, progress=False,
                                                      check_hash=False, weights_only=True)
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if source.endswith(".pkl") and not zipfile.is_zipfile(source):
            # detectron2's .pkl weights (e.g. the authors' dinat_large_in22k_224.pkl for Mask2Former)
            # are written with pickle.dump, not torch.save: torch.load cannot read them at all
            raise RuntimeError(
                f"load_pretrained: {source} is a plain pickle (detectron2's .pkl format, written with "
                "pickle.dump), which torch.load cannot read safely. If you trust the file, load it yourself "
                "with pickle.load(open(path, 'rb')) and pass the resulting dict, or pass the .pth file it "
                "was made from.") from exc
        if _foreign_head(source) is not None:
            # a text file is a "pickle" of unknown opcodes, which weights_only refuses first
            raise _unreadable(source, exc) from exc
        raise RuntimeError(
            f"load_pretrained: {source} holds objects other than tensors and plain containers, which "
            f"torch.load(weights_only=True) refuses ({exc}). If you trust the file, load it yourself with "
            "torch.load(path, map_location='cpu', weights_only=False) and pass the resulting dict."
        ) from exc
    except (EOFError, IndexError, KeyError) as exc:  # the unpickler on a truncated / foreign file
        raise _unreadable(source, exc) from exc
    except RuntimeError as exc:
        if "PytorchStreamReader" in str(exc) or "unexpected EOF" in str(exc):  # cut off or damaged
            raise _unreadable(source, exc) from exc
        raise


def _check_finite(state: Mapping, own: Mapping, source: str):
    """NaN / Inf weights (a diverged run, a bad conversion) would load silently and make every output
    NaN: refuse them, naming the first bad key."""
    for key, value in state.items():
        if (key in own and isinstance(value, torch.Tensor) and value.is_floating_point()
                and not bool(torch.isfinite(value).all())):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(
                f"load_pretrained: {source} has non-finite weights: {key} holds {bad} NaN / Inf value(s) of "
                f"{value.numel()}; the run that saved it diverged or the file is damaged: load an earlier "
                "checkpoint")


def load_checkpoint_file(checkpoint: Union[str, Mapping], map_location="cpu") -> Mapping:
    """Read a checkpoint (path, URL, ``.safetensors`` file or already loaded object) safely
    (``weights_only``) and strip its training wrappers (``state_dict`` / ``model`` / ``module``).

    The result still has the file's own key layout; :func:`convert_checkpoint` converts it. Every
    unusable source is an error naming it (see :func:`load_pretrained`).
    """
    return _unwrap(_read_file(checkpoint, map_location), _describe(checkpoint), "load_pretrained")


def load_pretrained(model: nn.Module, checkpoint: Union[str, Mapping], strict: bool = False,
                    logger: Optional[logging.Logger] = None, prefix: Optional[str] = None,
                    map_location="cpu"):
    """Load a checkpoint (path, URL or already loaded object) of any supported layout into ``model``.

    rpb tables of another kernel size are resized bicubically; any other shape mismatch is a
    ValueError naming the key and both shapes. Missing and unexpected keys are logged (and raise
    when ``strict``). ``prefix`` selects a sub-model (e.g. 'backbone.') before conversion; usually
    not needed, the layout is detected. Returns ``(missing_keys, unexpected_keys)``.

    A source that is no usable checkpoint is an error naming it: an empty, text, HTML or truncated
    file, wrappers that contain themselves or nest absurdly deep, no tensors at all; so are NaN / Inf
    values in any weight the model would load (the first such key is named).
    """
    logger = logger or _logger
    source = _describe(checkpoint)
    obj = load_checkpoint_file(checkpoint, map_location)
    if prefix:
        prefix = prefix if prefix.endswith(".") else prefix + "."  # mmengine accepts 'backbone' too
        obj = _strip_prefix(_strip_module_prefix(obj), prefix)
        if not obj:
            raise ValueError(f"load_pretrained: no key of the checkpoint starts with prefix {prefix!r}")
    state = convert_checkpoint(obj, logger=logger)
    _check_family(model, state)

    own = model.state_dict()
    if not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"load_pretrained: {source} holds no tensors (keys {sorted(map(str, state))[:8]}), "
                         "so it is not a state dict of a model")
    _check_finite(state, own, source)
    for key, value in list(state.items()):
        if key not in own or not isinstance(value, torch.Tensor) or value.shape == own[key].shape:
            continue
        target = own[key].shape
        if (key.endswith("attn.rpb") and value.dim() == 3 and len(target) == 3 and value.shape[0] == target[0]
                and value.shape[1] == value.shape[2] and target[1] == target[2]):
            logger.info("load_pretrained: resized %s from %s to %s (bicubic; other kernel size)",
                        key, list(value.shape), list(target))
            state[key] = resize_rpb(value, target[1])
            continue
        raise ValueError(
            f"load_pretrained: shape mismatch for {key}: checkpoint {list(value.shape)}, model {list(target)}; "
            "check that arch / embed_dim / depths / num_heads / mlp_ratio match the checkpoint")

    result = model.load_state_dict(state, strict=strict)
    if result.missing_keys:
        logger.warning("load_pretrained: missing keys (not in the checkpoint, left as initialised): %s",
                       ", ".join(result.missing_keys))
    if result.unexpected_keys:
        logger.warning("load_pretrained: unexpected keys (in the checkpoint, not in the model): %s",
                       ", ".join(result.unexpected_keys))
    if not result.missing_keys and not result.unexpected_keys:
        logger.info("load_pretrained: all %d keys matched", len(state))
    return result
