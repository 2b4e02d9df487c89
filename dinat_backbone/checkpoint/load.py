"""Loading a checkpoint into a model: family, shape, finiteness and completeness checks."""
from __future__ import annotations

import logging
import re
from typing import Mapping, Optional, Tuple, Union

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


# keys a backbone checkpoint may lack: the output norms (classification checkpoints have none; they
# keep their init, as in the authors' detection code)
_OPTIONAL_KEYS = re.compile(r"^norm(\d+|_stem)\.")


def _block_key(stage_attr: str):
    return re.compile(rf"^{re.escape(stage_attr)}\.(\d+)\.blocks\.(\d+)\.")


def stage_depths(state: Mapping, stage_attr: str) -> Tuple[int, ...]:
    """The number of blocks per stage in a native state dict (``levels`` / ``layers``.i.blocks.j):
    one more than the last block index (a block missing in between is a missing key, not a depth)."""
    pattern, last = _block_key(stage_attr), {}
    for key in state:
        m = pattern.match(key)
        if m:
            last[int(m.group(1))] = max(last.get(int(m.group(1)), -1), int(m.group(2)))
    return tuple(last.get(i, -1) + 1 for i in range(max(last) + 1)) if last else ()


def _model_name(model: nn.Module) -> str:
    """'DiNAT', 'NAT' or 'DiNAT_s' (the mm wrappers have the core's names), else the class name."""
    for cls in type(model).__mro__:
        if cls.__name__ in ("NAT", "DiNAT", "DiNAT_s"):
            return cls.__name__
    return type(model).__name__


def describe_variant(model: nn.Module, state: Mapping) -> Tuple[str, Optional[str]]:
    """``("depths (3, 4, 6, 5), embed_dim 64 = 'mini'", 'mini')`` for a native state dict, from the
    model family's ``arch_settings``; the arch is None when no named variant has those sizes."""
    stage_attr = getattr(model, "stage_attr", None)
    depths = stage_depths(state, stage_attr) if stage_attr else ()
    width = state.get(f"{stage_attr}.0.blocks.0.norm1.weight")
    embed_dim = int(width.shape[0]) if isinstance(width, torch.Tensor) and width.dim() == 1 else None
    arch = None
    for name, settings in (getattr(model, "arch_settings", None) or {}).items():
        if tuple(settings.get("depths", ())) == depths and settings.get("embed_dim") == embed_dim:
            arch = name
            break
    text = f"depths {depths}, embed_dim {embed_dim}" + (f" = {_model_name(model)}-{arch}" if arch else
                                                          " (no named arch)")
    return text, arch


def _advice(model: nn.Module, theirs: Optional[str], ours: Optional[str]) -> str:
    from .urls import pretrained_url

    name = _model_name(model)
    hints = []
    if theirs:
        hints.append(f"build the model with arch='{theirs}' (--arch {theirs}) to use this checkpoint")
    url = pretrained_url(name, ours) if ours else None
    if url:
        hints.append(f"load the {name}-{ours} checkpoint ({url})")
    return "; ".join(hints) if hints else "check that arch / embed_dim / depths match the checkpoint"


def _ranges(numbers) -> str:
    numbers, out = sorted(numbers), []
    for n in numbers:
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def summarize_keys(keys, stage_attr: Optional[str] = None, all_keys=None, limit: int = 12) -> str:
    """A short account of many state-dict keys: whole blocks grouped per stage
    (``levels.2.blocks.6-17 (12 whole blocks)``), the other keys by name, or by module when there are
    many (``norm0 (weight, bias)``).
    ``all_keys`` (the model's) tells whole blocks from blocks with a few keys missing; without it
    every block key counts as its whole block."""
    from collections import Counter

    keys = list(keys)
    pattern = _block_key(stage_attr) if stage_attr else None

    def block_of(key):
        m = pattern.match(key) if pattern else None
        return (int(m.group(1)), int(m.group(2))) if m else None

    found = Counter(filter(None, map(block_of, keys)))
    size = Counter(filter(None, map(block_of, all_keys))) if all_keys is not None else found
    whole = {block for block, n in found.items() if n >= size[block]}
    blocks, others = {}, []
    for key in keys:
        block = block_of(key)
        if block in whole:
            blocks.setdefault(block[0], set()).add(block[1])
        else:
            others.append(key)
    parts = [f"{stage_attr}.{i}.blocks.{_ranges(js)} ({len(js)} whole block{'s' if len(js) > 1 else ''})"
             for i, js in sorted(blocks.items())]
    if len(others) <= limit:  # a few keys: their full names
        parts += others
    else:  # many: by module, e.g. norm0 (weight, bias)
        modules = {}
        for key in others:
            module, _, leaf = key.rpartition(".")
            modules.setdefault(module or leaf, []).append(leaf if module else "")
        parts += [f"{module} ({', '.join(x for x in leaves if x)})" if any(leaves) else module
                  for module, leaves in modules.items()]
    more = len(parts) - limit
    return "; ".join(parts[:limit]) + (f"; ... and {more} more" if more > 0 else "")


def _check_complete(model: nn.Module, state: Mapping, own: Mapping, source: str) -> None:
    """A checkpoint of another size (a DiNAT-mini file in a tiny model: 12 of stage 3's 18 blocks would
    stay random) or one that leaves any of the model's weights unloaded is an error naming the
    likely variant and the unloaded blocks, not a warning with thousands of key names."""
    stage_attr = getattr(model, "stage_attr", None)
    missing = [k for k in own if k not in state and not _OPTIONAL_KEYS.match(k)]
    if stage_attr:
        theirs, ours = stage_depths(state, stage_attr), stage_depths(own, stage_attr)
        if theirs and theirs != ours:
            (their_text, their_arch), (our_text, our_arch) = (describe_variant(model, state),
                                                              describe_variant(model, own))
            advice = _advice(model, their_arch, our_arch)
            fate = []
            for i, (a, b) in enumerate(zip(theirs, ours)):
                if a < b:
                    fate.append(f"{b - a} of stage {i + 1}'s {b} blocks would keep random weights")
                elif a > b:
                    fate.append(f"{a - b} of stage {i + 1}'s {a} checkpoint blocks would be dropped")
            raise ValueError(
                f"load_pretrained: {source} is a checkpoint of another size: it has {their_text}, the model "
                f"{_model_name(model)} has {our_text}; {', '.join(fate) or 'the stages differ'}"
                + (f" (missing: {summarize_keys(missing, stage_attr, own)})" if missing else "")
                + f". {advice[0].upper()}{advice[1:]}")
    if missing:
        raise ValueError(
            f"load_pretrained: {source} leaves {len(missing)} of the model's {len(own)} weights unloaded (they would "
            f"keep their random init): {summarize_keys(missing, stage_attr, own)}. The checkpoint is for another "
            "model or is incomplete; pass allow_missing=True (init_cfg=dict(..., allow_missing=True)) if that is "
            "intended")


def load_pretrained(model: nn.Module, checkpoint: Union[str, Mapping], strict: bool = False,
                    logger: Optional[logging.Logger] = None, prefix: Optional[str] = None,
                    map_location="cpu", allow_missing: bool = False):
    """Load a checkpoint (path, URL or already loaded object) of any supported layout into ``model``.

    rpb tables of another kernel size are resized bicubically; any other shape mismatch is a
    ValueError naming the key, both shapes and both variants. A checkpoint that leaves any of the
    model's weights unloaded is a ValueError summarising them by block and naming the checkpoint's
    variant (e.g. depths (3, 4, 6, 5) = DiNAT-mini in a tiny model); only the output norms
    ``norm0..3`` may be missing (classification checkpoints have none; they keep their init).
    ``allow_missing=True`` makes missing weights a logged warning instead; ``strict=True`` is
    ``load_state_dict``'s strict check. Unexpected keys are logged. ``prefix`` selects a sub-model
    (e.g. 'backbone.') before conversion; usually not needed, the layout is detected. Returns
    ``(missing_keys, unexpected_keys)``.

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
        (their_text, their_arch), (our_text, our_arch) = (describe_variant(model, state),
                                                              describe_variant(model, own))
        raise ValueError(
            f"load_pretrained: shape mismatch for {key}: checkpoint {list(value.shape)}, model {list(target)}; "
            f"the checkpoint has {their_text}, the model {our_text}: "
            + _advice(model, their_arch, our_arch) + " (arch / embed_dim / depths / num_heads / mlp_ratio)")
    if not strict and not allow_missing:
        _check_complete(model, state, own, source)

    result = model.load_state_dict(state, strict=strict)
    stage_attr = getattr(model, "stage_attr", None)
    if result.missing_keys:
        logger.warning("load_pretrained: missing keys (not in the checkpoint, left as initialised): %s",
                       summarize_keys(result.missing_keys, stage_attr, own))
    if result.unexpected_keys:
        logger.warning("load_pretrained: unexpected keys (in the checkpoint, not in the model): %s",
                       summarize_keys(result.unexpected_keys, stage_attr, state))
    if not result.missing_keys and not result.unexpected_keys:
        logger.info("load_pretrained: all %d keys matched", len(state))
    return result


#: the keys of ``init_cfg=dict(type='Pretrained', ...)`` that :func:`load_pretrained_from_cfg` reads
PRETRAINED_CFG_KEYS = ("type", "checkpoint", "prefix", "map_location", "allow_missing")


def load_pretrained_from_cfg(model: nn.Module, init_cfg: Mapping, logger: Optional[logging.Logger] = None):
    """Load ``init_cfg=dict(type='Pretrained', checkpoint=path_or_url[, prefix=..., map_location=...,
    allow_missing=...])``
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
                           map_location=cfg.get("map_location", "cpu"), allow_missing=bool(cfg.get("allow_missing")))


def _without_wrappers(key: str) -> str:
    while key.startswith("module."):  # DDP / TTA wrappers, as mmengine's load_from strips them
        key = key[len("module."):]
    return key


def weights_left_unloaded(model: nn.Module, state: Mapping) -> Tuple[list, list]:
    """``(missing, mismatched)``: the model's state-dict keys a full-model checkpoint (e.g. a detector's
    ``state_dict``) does not provide, and those it provides in another shape; ``module.`` wrapper
    prefixes are ignored on both sides. What mmengine's ``load_from`` would leave as initialised."""
    theirs = {_without_wrappers(k): v for k, v in state.items()}
    missing, mismatched = [], []
    for key, value in model.state_dict().items():
        key = _without_wrappers(key)
        other = theirs.get(key)
        if other is None:
            missing.append(key)
        elif isinstance(other, torch.Tensor) and other.shape != value.shape:
            mismatched.append(f"{key} {list(other.shape)} -> {list(value.shape)}")
    return missing, mismatched


def summarize_by_module(keys, all_keys, depth: int = 2, limit: int = 12) -> str:
    """``backbone.levels (all 96); neck.lateral_convs (2 of 8)``: keys counted per module path of
    ``depth`` components against the model's ``all_keys``."""
    from collections import Counter

    def module_of(key):
        return ".".join(key.split(".")[:depth])

    total = Counter(map(module_of, all_keys))
    found = Counter(map(module_of, keys))
    parts = [f"{m} ({'all ' + str(n) if n == total[m] else f'{n} of {total[m]}'})" for m, n in found.items()]
    more = len(parts) - limit
    return "; ".join(parts[:limit]) + (f"; ... and {more} more modules" if more > 0 else "")
