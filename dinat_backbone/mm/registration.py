"""Every registry entry this package makes, in one place.

:func:`register_components` (run by ``import dinat_backbone.mm``) registers what a config names:
the backbones in mmdet's / mmseg's ``MODELS``, the channel-check hook and the layer-decay
constructor. :func:`register_training_components` (run by
:func:`dinat_backbone.mm.setup_training`) registers the training infrastructure: the RNG-state
resume hook and the CPU DDP wrapper.

A name already taken in a registry by another class is an error naming both classes, never a
silent override (mmengine's ``force=True``). Only a class of the same module and name (this
package's own module imported again, e.g. by ``importlib.reload``) replaces its earlier entry.
"""
from __future__ import annotations

import importlib
from typing import List, Optional

# mmengine is imported inside the functions: without mmdet / mmseg, task_registries() is the
# first error (naming the install command), not a missing mmengine

__all__ = ["RegistryClashError", "register", "register_components", "register_training_components",
           "REGISTERED_IN"]

#: names of the mm packages whose MODELS registry holds DiNAT / NAT / DiNAT_s after import
REGISTERED_IN: List[str] = []


class RegistryClashError(RuntimeError):
    """A registry already holds another class under the name this package registers."""


def _qualified(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def register(registry, cls: type, name: Optional[str] = None) -> None:
    """Register ``cls`` in ``registry`` under ``name`` (default: its class name); another class
    under that name is a :class:`RegistryClashError` naming both."""
    name = name or cls.__name__
    existing = registry.module_dict.get(name)
    if existing is not None and existing is not cls and _qualified(existing) != _qualified(cls):
        raise RegistryClashError(
            f"dinat_backbone.mm registers {_qualified(cls)} as {name!r} in the {registry.name!r} registry "
            f"(scope {registry.scope!r}), but {_qualified(existing)} is already registered under that name. "
            "Two packages claim the same config type: import only one of them (check the config's custom_imports) "
            f"or remove {name!r} from the other package's registry")
    # force: replaces only this package's own earlier definition of the class (checked above)
    registry.register_module(name=name, module=cls, force=True)


def _optional_import(name: str):
    """Import ``name``; return None only when its top-level package is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        top = name.split(".")[0]
        if e.name is not None and (e.name == top or e.name.startswith(top + ".")):
            return None
        raise  # installed but broken (e.g. a missing dependency of mmdet): do not hide it


def task_registries() -> dict:
    """``{'mmdet': mmdet.registry, 'mmseg': mmseg.registry}`` for those installed; ImportError
    naming the install command when neither is."""
    found = {name: _optional_import(f"{name}.registry") for name in ("mmdet", "mmseg")}
    found = {name: module for name, module in found.items() if module is not None}
    if not found:
        raise ImportError(
            "dinat_backbone.mm registers the backbone with mmdet / mmsegmentation, but neither is "
            "installed. Install the stack with `bash tools/install.sh` (or `make install`).")
    return found


def register_components() -> None:
    """What a config names: ``type='DiNAT' | 'NAT' | 'DiNAT_s'`` (mmdet's and mmseg's ``MODELS``),
    ``DiNATChannelCheckHook`` (``HOOKS``), ``DiNATLayerDecayOptimizerConstructor``
    (``OPTIM_WRAPPER_CONSTRUCTORS``; the root registries are visible from every scope)."""
    from mmengine.registry import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS

    from .backbones import NAT, DiNAT, DiNAT_s
    from .channels import DiNATChannelCheckHook
    from .layer_decay import DiNATLayerDecayOptimizerConstructor

    for name, registry_module in task_registries().items():
        for cls in (DiNAT, NAT, DiNAT_s):
            register(registry_module.MODELS, cls)
        if name not in REGISTERED_IN:
            REGISTERED_IN.append(name)
    register(HOOKS, DiNATChannelCheckHook)
    register(OPTIM_WRAPPER_CONSTRUCTORS, DiNATLayerDecayOptimizerConstructor)


def register_training_components() -> None:
    """The training infrastructure: ``DiNATRNGStateHook`` (``HOOKS``) and
    ``CPUDistributedDataParallel`` (``MODEL_WRAPPERS``)."""
    from mmengine.registry import HOOKS, MODEL_WRAPPERS

    from .ddp import CPUDistributedDataParallel
    from .rng_resume import DiNATRNGStateHook

    register(HOOKS, DiNATRNGStateHook)
    register(MODEL_WRAPPERS, CPUDistributedDataParallel)
