"""OpenMMLab glue: DiNAT / NAT / DiNAT_s for mmdet 3.x and mmsegmentation 1.x.

Configs load it with::

    custom_imports = dict(imports=['dinat_backbone.mm'], allow_failed_imports=False)

Importing it registers what configs name (:mod:`.registration`, the one place that touches
registries) and changes no other process-wide state:

* ``type='DiNAT' | 'NAT' | 'DiNAT_s'`` in ``mmdet.registry.MODELS`` and ``mmseg.registry.MODELS``
  (whichever is installed; at least one must be): :mod:`.backbones`, the core models plus
  mmengine's ``init_cfg`` and mmseg's legacy ``pretrained=``;
* ``DiNATChannelCheckHook`` in ``HOOKS``: :mod:`.channels`, a neck / head built for another
  backbone width fails before the run, naming the channels;
* ``DiNATLayerDecayOptimizerConstructor`` in ``OPTIM_WRAPPER_CONSTRUCTORS``: :mod:`.layer_decay`.

A name another package already registered is an error naming both classes, not an override.

Training infrastructure is set up by one call, :func:`setup_training` (:mod:`.training`;
``tools/train.py`` and ``tools/test.py`` make it): torch.load's ``weights_only`` allow-list for
mmengine checkpoints (:mod:`.checkpoint_globals`), ``DiNATRNGStateHook`` (:mod:`.rng_resume`,
reproducible ``--resume``; its reads of mmengine internals are in :mod:`.mmengine_internals`) and
``CPUDistributedDataParallel`` (:mod:`.ddp`). With mmdet's / mmseg's own tools, import
:mod:`dinat_backbone.mm.enable_training` from the config as well (see :mod:`.training`).

The core package (``dinat_backbone``, ``dinat_backbone.dinat``, ...) never imports this package
or any mm package.
"""
from __future__ import annotations

from .registration import REGISTERED_IN, RegistryClashError, register_components, task_registries

task_registries()  # neither mmdet nor mmseg installed: ImportError with the install command, before mmengine's

from .backbones import NAT, DiNAT, DiNAT_s  # noqa: E402
from .channels import DiNATChannelCheckHook, check_neck_channels  # noqa: E402
from .checkpoint_globals import mm_safe_globals  # noqa: E402
from .ddp import CPUDistributedDataParallel  # noqa: E402
from .layer_decay import DiNATLayerDecayOptimizerConstructor, layer_ids  # noqa: E402
from .mmengine_internals import MMEngineInternalsError  # noqa: E402
from .rng_resume import DiNATRNGStateHook, rng_state, set_rng_state  # noqa: E402
from .training import setup_training  # noqa: E402

register_components()

__all__ = [
    "DiNAT",
    "NAT",
    "DiNAT_s",
    "DiNATLayerDecayOptimizerConstructor",
    "DiNATChannelCheckHook",
    "DiNATRNGStateHook",
    "check_neck_channels",
    "rng_state",
    "set_rng_state",
    "CPUDistributedDataParallel",
    "layer_ids",
    "mm_safe_globals",
    "setup_training",
    "MMEngineInternalsError",
    "RegistryClashError",
    "REGISTERED_IN",
]
