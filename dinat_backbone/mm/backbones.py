"""DiNAT / NAT / DiNAT_s for mmdet / mmseg configs: the core models plus mmengine's ``init_cfg``.

Thin subclasses of the core models (:class:`dinat_backbone.dinat.DiNAT` / ``NAT``,
:class:`dinat_backbone.dinat_s.DiNAT_s`): same modules, same ``state_dict`` keys. They accept a
list of mmengine initialisers and mmseg's legacy ``pretrained=`` argument; the checkpoint itself
is loaded by the core's ``init_weights`` (:func:`dinat_backbone.checkpoint.load_pretrained`).
Registered by :mod:`dinat_backbone.mm.registration`.
"""
from __future__ import annotations

import copy
from typing import List, Optional, Tuple

from mmengine.logging import MMLogger
from mmengine.model import initialize

from .. import dinat as _core
from .. import dinat_s as _core_s

__all__ = ["DiNAT", "NAT", "DiNAT_s"]


def _split_init_cfg(init_cfg) -> Tuple[Optional[dict], List[dict]]:
    """Split an mmengine ``init_cfg`` (dict or list of dicts) into (Pretrained, others)."""
    if init_cfg is None:
        return None, []
    cfgs = [init_cfg] if isinstance(init_cfg, dict) else list(init_cfg)
    pretrained, others = None, []
    for c in cfgs:
        c = dict(c)
        if c.get("type") == "Pretrained":
            if pretrained is not None:
                raise ValueError("init_cfg has more than one 'Pretrained' entry")
            if not c.get("checkpoint"):
                raise ValueError("init_cfg type='Pretrained' needs a 'checkpoint' (path or URL)")
            pretrained = c
        else:
            others.append(c)
    return pretrained, others


class _MMBackboneMixin:
    """mmengine-style ``init_cfg`` handling on top of a core DiNAT / NAT / DiNAT_s.

    * ``init_cfg=dict(type='Pretrained', checkpoint=path_or_url)``: handed to the core model, whose
      ``init_weights()`` loads it (any supported format: ImageNet ``.pth``, mmdet/mmseg
      detector/segmentor checkpoints, HF transformers, mmengine wrappers). mmengine's ``prefix`` /
      ``map_location`` keys are accepted: the format conversion finds the backbone weights itself,
      checkpoints are read on the CPU.
    * other mmengine initialisers (``Normal``, ``TruncNormal``, ``Constant``, ...) are applied with
      ``mmengine.model.initialize`` after the core's own random init and before the checkpoint.
    * ``pretrained='...'`` (what mmseg's ``EncoderDecoder(pretrained=...)`` passes down) is the
      same as a Pretrained ``init_cfg``.
    """

    _extra_arguments = ("pretrained",)

    def __init__(self, *args, pretrained: Optional[str] = None, init_cfg=None, **kwargs):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError("give either `pretrained` or `init_cfg`, not both")
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        pretrained_cfg, others = _split_init_cfg(init_cfg)
        core_cfg = None
        if pretrained_cfg is not None:
            core_cfg = {k: pretrained_cfg[k] for k in ("type", "checkpoint", "prefix", "map_location", "allow_missing")
                        if pretrained_cfg.get(k) is not None}
        super().__init__(*args, init_cfg=core_cfg, **kwargs)
        self._mm_init_cfg = copy.deepcopy(init_cfg)  # the full mmengine-style config, as given
        self._mm_other_init_cfgs = others
        self._is_init = False

    @property
    def is_init(self) -> bool:
        return self._is_init

    @is_init.setter
    def is_init(self, value: bool) -> None:
        self._is_init = value

    def _apply_initialisers(self):
        if self._mm_other_init_cfgs:
            initialize(self, copy.deepcopy(self._mm_other_init_cfgs))

    def init_weights(self):
        """The core's ``init_weights`` (random init, mmengine initialisers, Pretrained checkpoint),
        reporting to the mmengine logger."""
        super().init_weights(logger=MMLogger.get_current_instance())
        self._is_init = True


class DiNAT(_MMBackboneMixin, _core.DiNAT):
    """DiNAT backbone for mmdet / mmseg configs (``type='DiNAT'``).

    Same arguments, modules and weights as :class:`dinat_backbone.dinat.DiNAT`; adds
    mmengine-style ``init_cfg`` handling and the legacy ``pretrained`` argument.
    """


class NAT(_MMBackboneMixin, _core.NAT):
    """NAT backbone (every dilation 1) for mmdet / mmseg configs (``type='NAT'``)."""


class DiNAT_s(_MMBackboneMixin, _core_s.DiNAT_s):  # noqa: N801  (the registry name)
    """DiNAT_s (Swin-layout DiNAT) backbone for mmdet / mmseg configs (``type='DiNAT_s'``)."""
