"""The training infrastructure, set up by one call: :func:`setup_training`.

``import dinat_backbone.mm`` only registers what configs name; it changes no process-wide state.
What a training (or testing) process needs beyond that changes torch's and mmengine's global
state, so it happens only when asked for:

* torch.load's ``weights_only`` allow-list gets exactly the globals mmengine 0.10.7 training
  checkpoints pickle (:func:`~dinat_backbone.mm.checkpoint_globals.mm_safe_globals`): ``--resume``
  and ``tools/test.py`` read this project's checkpoints on torch >= 2.6;
* ``DiNATRNGStateHook`` (the random generators' states in checkpoints, so that ``--resume``
  follows the interrupted run) is registered in ``HOOKS``;
* ``CPUDistributedDataParallel`` (DDP for CPU modules over gloo) is registered in ``MODEL_WRAPPERS``.

``tools/train.py`` and ``tools/test.py`` call ``setup_training(cfg)``, which also adds
``DiNATChannelCheckHook`` and ``DiNATRNGStateHook`` to the config's ``custom_hooks``. With mmdet's
or mmseg's own ``tools/train.py``, put the module :mod:`dinat_backbone.mm.enable_training` in
the config's ``custom_imports`` and the hooks in ``custom_hooks``::

    custom_imports = dict(imports=['dinat_backbone.mm', 'dinat_backbone.mm.enable_training'],
                          allow_failed_imports=False)
    custom_hooks = [dict(type='DiNATChannelCheckHook'), dict(type='DiNATRNGStateHook')]
"""
from __future__ import annotations

import torch

from .checkpoint_globals import mm_safe_globals
from .registration import register_training_components

__all__ = ["setup_training", "TRAINING_HOOKS"]

#: the hooks :func:`setup_training` adds to a config's ``custom_hooks``
TRAINING_HOOKS = ("DiNATChannelCheckHook", "DiNATRNGStateHook")


def setup_training(cfg=None):
    """Set up the training infrastructure (see the module docstring); with ``cfg`` (an mmengine
    ``Config``) also add :data:`TRAINING_HOOKS` to its ``custom_hooks`` (those already there are
    kept as they are). Safe to call more than once; returns ``cfg``."""
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:  # torch < 2.4: weights_only is not the default there anyway
        add_safe_globals(mm_safe_globals())
    register_training_components()
    if cfg is not None:
        hooks = list(cfg.get("custom_hooks", None) or [])
        for hook in TRAINING_HOOKS:
            if not any(h.get("type") == hook for h in hooks):
                hooks.append(dict(type=hook))
        cfg.custom_hooks = hooks
    return cfg
