"""Layer-wise (or stage-wise) learning-rate decay for models with a DiNAT / NAT / DiNAT_s backbone.

The depth of every backbone parameter is read from the model itself: its stages
(``backbone.stages``, named by the model's ``stage_attr``: ``levels`` in DiNAT / NAT, ``layers``
in DiNAT_s), their ``blocks`` and ``downsample`` modules and the ``patch_embed``; parameter names
come from ``named_modules``, so no name pattern of the key layout is written here.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Dict, List

import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor

from ..dinat import DiNATBackboneBase

__all__ = ["DiNATLayerDecayOptimizerConstructor", "layer_ids", "num_decay_layers"]

DECAY_TYPES = ("layer_wise", "stage_wise")
#: the ``paramwise_cfg`` keys the constructor reads; any other key (e.g. mmengine's
#: ``norm_decay_mult``, which this constructor does not apply) is an error, not silently ignored
PARAMWISE_KEYS = ("decay_rate", "decay_type", "num_layers", "backbone_prefix", "custom_keys")
_NAME = "DiNATLayerDecayOptimizerConstructor"


def num_decay_layers(backbone: DiNATBackboneBase, decay_type: str = "layer_wise") -> int:
    """What ``num_layers`` means for ``backbone``: its block count (layer-wise) or stage count
    (stage-wise)."""
    depths = [len(stage.blocks) for stage in backbone.stages]
    return sum(depths) if decay_type == "layer_wise" else len(depths)


def layer_ids(backbone: DiNATBackboneBase, decay_type: str = "layer_wise", prefix: str = "") -> Dict[str, int]:
    """``{parameter name: layer id}`` for the backbone's patch embedding, blocks and downsamplers,
    each name as the enclosing model spells it (``prefix`` + the backbone's own name).

    ``layer_wise`` (ids ``0 .. L+1`` for ``L`` blocks): the patch embedding 0; block ``j`` of stage
    ``i`` ``1 + (blocks before stage i) + j``; stage ``i``'s downsampler (it feeds stage ``i+1``)
    the id of stage ``i+1``'s first block. ``stage_wise`` (ids ``0 .. S+1`` for ``S`` stages): the
    patch embedding 0, stage ``i``'s blocks ``i + 1``, its downsampler ``i + 2``. Every other
    parameter (the output norms ``norm{i}``, the neck, the heads) is not in the map: it gets the
    last id, ``L + 1`` / ``S + 1``.
    """
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"{_NAME}: decay_type must be one of {DECAY_TYPES}, got {decay_type!r}")
    names = {module: name for name, module in backbone.named_modules()}
    ids: Dict[str, int] = {}

    def assign(module: nn.Module, layer_id: int) -> None:
        for name, _ in module.named_parameters(prefix=prefix + names[module]):
            ids[name] = layer_id

    assign(backbone.patch_embed, 0)
    first_block = 1
    for i, stage in enumerate(backbone.stages):
        for j, block in enumerate(stage.blocks):
            assign(block, first_block + j if decay_type == "layer_wise" else i + 1)
        first_block += len(stage.blocks)
        if stage.downsample is not None:
            assign(stage.downsample, first_block if decay_type == "layer_wise" else i + 2)
    return ids


def _check_number(key: str, value, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{_NAME}: paramwise_cfg['{key}'] must be a finite number, got {value!r}; {hint}")
    return float(value)


class DiNATLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise (or stage-wise) learning-rate decay for models with a DiNAT / NAT / DiNAT_s backbone.

    ``lr = base_lr * decay_rate ** (num_layers + 1 - layer_id)`` with the ids of :func:`layer_ids`
    (so the heads and neck train at ``base_lr``, the patch embedding at the smallest rate). Usage::

        optim_wrapper = dict(
            type='OptimWrapper',
            constructor='DiNATLayerDecayOptimizerConstructor',
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
            paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise',
                               custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))

    ``paramwise_cfg`` (required) keys: ``decay_rate`` (required; in ``(0, 1]``, 1 = no decay),
    ``decay_type`` ('layer_wise' default or 'stage_wise'), ``num_layers`` (optional: the backbone's
    block count (layer-wise) or stage count (stage-wise), read from the model; a smaller value
    decays only the first ``num_layers`` blocks / stages, the deeper ones train at ``base_lr``),
    ``backbone_prefix`` (default 'backbone.'), ``custom_keys`` (mmengine semantics: the longest
    matching key's ``lr_mult`` / ``decay_mult`` multiply on top of the layer decay). Without custom
    keys, 1-D parameters (norms, biases, layer-scale gammas) and ``rpb`` tables get no weight decay.
    Frozen parameters (``requires_grad=False``) are left out. Other keys, values it cannot mean
    (a ``num_layers`` beyond the model's depth, a negative or NaN ``decay_rate``, ...) and a model
    without a DiNAT-like backbone at ``backbone_prefix`` are errors naming the fix.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg=None):
        if not paramwise_cfg:
            raise ValueError(
                f"{_NAME} needs paramwise_cfg with at least decay_rate (without it this would be a plain optimizer "
                "with no layer decay), e.g. optim_wrapper=dict(..., constructor='DiNATLayerDecayOptimizerConstructor', "
                "paramwise_cfg=dict(decay_rate=0.9)); or drop the constructor for no decay")
        unknown = sorted(set(paramwise_cfg) - set(PARAMWISE_KEYS))
        if unknown:
            raise ValueError(f"{_NAME}: unknown paramwise_cfg key(s) {unknown}; it reads {list(PARAMWISE_KEYS)} "
                             "(per-parameter multipliers go into custom_keys, e.g. "
                             "custom_keys={'norm': dict(decay_mult=0.)})")
        if "decay_rate" not in paramwise_cfg:
            raise ValueError(f"{_NAME} needs paramwise_cfg['decay_rate'] (e.g. 0.9; 1.0 means no decay)")
        rate = _check_number("decay_rate", paramwise_cfg["decay_rate"], "e.g. 0.9 (1.0 means no decay)")
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"{_NAME}: paramwise_cfg['decay_rate'] must be in (0, 1] (each layer's lr is the next "
                             f"one's times decay_rate; 1.0 means no decay), got {rate!r}; e.g. 0.9. To keep early "
                             "layers fixed, freeze them with the backbone's frozen_stages instead")
        decay_type = paramwise_cfg.get("decay_type", "layer_wise")
        if decay_type not in DECAY_TYPES:
            raise ValueError(f"{_NAME}: paramwise_cfg['decay_type'] must be one of {DECAY_TYPES}, got {decay_type!r}")
        custom_keys = paramwise_cfg.get("custom_keys", {})
        if not isinstance(custom_keys, dict) or not all(
                isinstance(v, dict) and set(v) <= {"lr_mult", "decay_mult"} for v in custom_keys.values()):
            raise ValueError(f"{_NAME}: paramwise_cfg['custom_keys'] must map name parts to dict(lr_mult=..., "
                             f"decay_mult=...), got {custom_keys!r}")
        for key, mults in custom_keys.items():
            for mult, value in mults.items():
                if _check_number(f"custom_keys'][{key!r}]['{mult}", value, "e.g. 0.0 or 1.0") < 0:
                    raise ValueError(f"{_NAME}: paramwise_cfg['custom_keys'][{key!r}]['{mult}'] must be >= 0, "
                                     f"got {value!r}")
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    @staticmethod
    def _backbone(module: nn.Module, prefix: str) -> DiNATBackboneBase:
        backbone = module
        for part in prefix.rstrip(".").split(".") if prefix else []:
            backbone = getattr(backbone, part, None)
            if backbone is None:
                break
        if not isinstance(backbone, DiNATBackboneBase):
            raise ValueError(
                f"{_NAME}: the model has no DiNAT/NAT backbone (nor DiNAT_s) at '{prefix}' (got "
                f"{type(backbone).__name__}); set paramwise_cfg['backbone_prefix'] to where it is, or use another "
                "constructor")
        return backbone

    def _num_layers(self, backbone: DiNATBackboneBase, decay_type: str) -> int:
        depth = num_decay_layers(backbone, decay_type)
        num_layers = self.paramwise_cfg.get("num_layers", depth)
        unit = "blocks" if decay_type == "layer_wise" else "stages"
        if isinstance(num_layers, bool) or not isinstance(num_layers, Integral) or not 1 <= num_layers <= depth:
            raise ValueError(
                f"{_NAME}: paramwise_cfg['num_layers']={num_layers!r}, but the backbone "
                f"{type(backbone).__name__} has {depth} {unit} ({decay_type}); num_layers must be an integer in "
                f"1..{depth} (leave it out for {depth}; a larger value would decay the neck and heads too, -1 or 0 "
                "would switch the decay off)")
        return int(num_layers)

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        cfg = self.paramwise_cfg
        decay_rate = float(cfg["decay_rate"])
        decay_type = cfg.get("decay_type", "layer_wise")
        prefix = cfg.get("backbone_prefix", "backbone.")
        prefix = prefix if not prefix or prefix.endswith(".") else prefix + "."
        backbone = self._backbone(module, prefix)
        num_layers = self._num_layers(backbone, decay_type)
        ids = layer_ids(backbone, decay_type, prefix)
        custom_keys: Dict[str, dict] = dict(cfg.get("custom_keys", {}))
        sorted_keys = sorted(custom_keys, key=len, reverse=True)
        base_lr = self.base_lr
        base_wd = self.base_wd or 0.0

        groups: Dict[tuple, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer_id = min(ids.get(name, num_layers + 1), num_layers + 1)
            scale = decay_rate ** (num_layers + 1 - layer_id)
            lr_mult, decay_mult = 1.0, None
            for key in sorted_keys:
                if key in name:
                    lr_mult = custom_keys[key].get("lr_mult", 1.0)
                    decay_mult = custom_keys[key].get("decay_mult", None)
                    break
            if decay_mult is None:
                no_decay = not custom_keys and (param.ndim == 1 or name.endswith(".bias") or "rpb" in name)
                decay_mult = 0.0 if no_decay else 1.0
            group_key = (layer_id, lr_mult, decay_mult)
            if group_key not in groups:
                groups[group_key] = {
                    "params": [],
                    "lr": base_lr * scale * lr_mult,
                    "weight_decay": base_wd * decay_mult,
                    "param_names": [],
                    "layer_id": layer_id,
                    "lr_scale": scale * lr_mult,
                }
            groups[group_key]["params"].append(param)
            groups[group_key]["param_names"].append(name)
        depths = [len(stage.blocks) for stage in backbone.stages]
        MMLogger.get_current_instance().info(
            f"{_NAME}: {decay_type}, decay_rate={decay_rate}, num_layers={num_layers}, depths={depths}, "
            f"{len(groups)} parameter groups")
        params.extend(groups[k] for k in sorted(groups))
