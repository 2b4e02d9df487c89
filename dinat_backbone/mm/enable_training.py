"""Import this module to call :func:`dinat_backbone.mm.setup_training` (without a config):
for configs run by mmdet's or mmseg's own ``tools/train.py`` / ``tools/test.py``, which know
nothing of this package::

    custom_imports = dict(imports=['dinat_backbone.mm', 'dinat_backbone.mm.enable_training'],
                          allow_failed_imports=False)
    custom_hooks = [dict(type='DiNATChannelCheckHook'), dict(type='DiNATRNGStateHook')]

Unlike ``dinat_backbone.mm``, importing it changes process-wide state (torch.load's allow-list,
mmengine's ``HOOKS`` and ``MODEL_WRAPPERS``): that is its purpose.
"""
from .training import setup_training

setup_training()
