"""Every read of mmengine internals that :class:`~dinat_backbone.mm.rng_resume.DiNATRNGStateHook`
needs, in one place, each checked before it is used.

mmengine has no public API for "will a checkpoint be written after this iteration?" nor for
"hand me the batches of a resumed iteration-based loop", so the hook reads what mmengine 0.10.7
keeps on its objects:

* ``CheckpointHook``: the attributes ``by_epoch``, ``interval``, ``save_begin`` and ``save_last``
  (its own saving schedule, re-evaluated to gather every rank's states in the step before it saves);
* ``IterBasedTrainLoop``: the attribute ``dataloader_iterator`` (the loop re-reads the batches
  already trained on from it after a resume; the hook wraps it to restore the states right before
  the first new batch).

An mmengine without them fails at the start of the run with :class:`MMEngineInternalsError`
naming the attribute, the class and what to do, never later with an ``AttributeError`` or, worse,
with a resumed run that silently does not follow the interrupted one.
"""
from __future__ import annotations

from typing import Iterator, List, Sequence

import mmengine
from mmengine.hooks import CheckpointHook
from mmengine.runner import IterBasedTrainLoop

__all__ = [
    "MMEngineInternalsError",
    "CHECKPOINT_HOOK_ATTRIBUTES",
    "ITER_LOOP_ATTRIBUTES",
    "check_checkpoint_hook",
    "check_train_loop",
    "checkpoint_hooks",
    "saves_after_train_iter",
    "saves_after_train_epoch",
    "replays_trained_batches",
    "dataloader_iterator",
    "set_dataloader_iterator",
]

#: what ``CheckpointHook`` must carry (mmengine 0.10.7 sets them in ``__init__``)
CHECKPOINT_HOOK_ATTRIBUTES = ("by_epoch", "interval", "save_begin", "save_last")
#: what an ``IterBasedTrainLoop`` must carry (mmengine 0.10.7 sets it in ``__init__``)
ITER_LOOP_ATTRIBUTES = ("dataloader_iterator",)


class MMEngineInternalsError(RuntimeError):
    """The installed mmengine lacks an internal attribute that DiNATRNGStateHook reads."""


def _require(obj, names: Sequence[str]) -> None:
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        cls = type(obj)
        raise MMEngineInternalsError(
            f"DiNATRNGStateHook reads {cls.__module__}.{cls.__qualname__}."
            f"{', '.join(missing)}, which this object lacks (mmengine {mmengine.__version__}; the hook is "
            "written against mmengine 0.10.7's internals). Install mmengine==0.10.7 (tools/install.sh pins it), "
            "or remove DiNATRNGStateHook from custom_hooks (a resumed run then draws other random numbers than "
            "the interrupted one would have)")


def check_checkpoint_hook(hook: CheckpointHook) -> None:
    """:class:`MMEngineInternalsError` unless ``hook`` has every attribute of
    :data:`CHECKPOINT_HOOK_ATTRIBUTES`."""
    _require(hook, CHECKPOINT_HOOK_ATTRIBUTES)


def check_train_loop(loop) -> None:
    """:class:`MMEngineInternalsError` unless an ``IterBasedTrainLoop`` has every attribute of
    :data:`ITER_LOOP_ATTRIBUTES` (other loops do not replay batches: nothing to check)."""
    if isinstance(loop, IterBasedTrainLoop):
        _require(loop, ITER_LOOP_ATTRIBUTES)


def checkpoint_hooks(runner) -> List[CheckpointHook]:
    """The runner's ``CheckpointHook`` instances, each checked."""
    hooks = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
    for hook in hooks:
        check_checkpoint_hook(hook)
    return hooks


def saves_after_train_iter(runner) -> bool:
    """Whether a ``CheckpointHook`` saves in this iteration's ``after_train_iter`` (its own test)."""
    return any(not h.by_epoch and (h.every_n_train_iters(runner, h.interval, h.save_begin)
                                   or (h.save_last and h.is_last_train_iter(runner)))
               for h in checkpoint_hooks(runner))


def saves_after_train_epoch(runner) -> bool:
    """Whether a ``CheckpointHook`` saves in this epoch's ``after_train_epoch`` (its own test)."""
    return any(h.by_epoch and (h.every_n_epochs(runner, h.interval, h.save_begin)
                               or (h.save_last and h.is_last_train_epoch(runner)))
               for h in checkpoint_hooks(runner))


def replays_trained_batches(loop) -> bool:
    """Whether ``loop`` will re-read the batches already trained on before the first new one
    (a resumed ``IterBasedTrainLoop``)."""
    check_train_loop(loop)
    return isinstance(loop, IterBasedTrainLoop) and loop.iter > 0


def dataloader_iterator(loop) -> Iterator:
    check_train_loop(loop)
    return loop.dataloader_iterator


def set_dataloader_iterator(loop, iterator) -> None:
    check_train_loop(loop)
    loop.dataloader_iterator = iterator
