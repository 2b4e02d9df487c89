"""Loading a checkpoint into a model: family, shape, finiteness and completeness checks."""
from __future__ import annotations

import logging
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .convert import _FAMILY_LAYOUTS, _strip_module_prefix, _strip_prefix, checkpoint_family, convert_checkpoint
from .files import _describe, load_checkpoint_file

_logger = logging.getLogger("dinat_backbone.checkpoint")


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
    own = model.state_dict()
    model_bytes = sum(v.numel() * v.element_size() for v in own.values() if isinstance(v, torch.Tensor))
    obj = load_checkpoint_file(checkpoint, map_location, model_bytes=model_bytes, logger=logger)
    if prefix:
        prefix = prefix if prefix.endswith(".") else prefix + "."  # mmengine accepts 'backbone' too
        obj = _strip_prefix(_strip_module_prefix(obj), prefix)
        if not obj:
            raise ValueError(f"load_pretrained: no key of the checkpoint starts with prefix {prefix!r}")
    state = convert_checkpoint(obj, logger=logger)
    _check_family(model, state)
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


#: the keys of ``init_cfg=dict(type='Pretrained', ...)`` that :func:`load_pretrained_from_cfg` reads
PRETRAINED_CFG_KEYS = ("type", "checkpoint", "prefix", "map_location")


def load_pretrained_from_cfg(model: nn.Module, init_cfg: Mapping, logger: Optional[logging.Logger] = None):
    """Load ``init_cfg=dict(type='Pretrained', checkpoint=path_or_url[, prefix=..., map_location=...])``
    into ``model`` through :func:`load_pretrained`: the one place an ``init_cfg`` becomes a loaded
    checkpoint (the core models' ``init_weights`` and the mm wrappers both call it)."""
    cfg = dict(init_cfg)
    if cfg.get("type") != "Pretrained" or not cfg.get("checkpoint"):
        raise ValueError(f"{type(model).__name__}: init_cfg must be None or dict(type='Pretrained', "
                         f"checkpoint=path_or_url), got {init_cfg}")
    unknown = sorted(set(cfg) - set(PRETRAINED_CFG_KEYS))
    if unknown:
        raise ValueError(f"{type(model).__name__}: init_cfg type='Pretrained' has no key(s) {unknown}; it takes "
                         f"{list(PRETRAINED_CFG_KEYS)}")
    return load_pretrained(model, cfg["checkpoint"], strict=False, logger=logger, prefix=cfg.get("prefix"),
                           map_location=cfg.get("map_location", "cpu"))
