"""Reproducible ``--resume``: the random generators' states travel in the checkpoint.

:class:`DiNATRNGStateHook` is training infrastructure: :func:`dinat_backbone.mm.setup_training`
registers it (``tools/train.py`` calls that and adds the hook to every config). What it reads of
mmengine's internals goes through :mod:`dinat_backbone.mm.mmengine_internals`.
"""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch
from mmengine.hooks import Hook

from . import mmengine_internals as internals

__all__ = ["rng_state", "set_rng_state", "DiNATRNGStateHook"]


def rng_state() -> dict:
    """This process's python / numpy / torch (and CUDA, once initialised) generator states, as
    plain containers and tensors (what ``torch.load(weights_only=True)`` reads without an
    allow-list entry)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"].cpu())  # resume maps the checkpoint to the GPU
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


class _RestoreBeforeNextBatch:
    """Wraps an ``IterBasedTrainLoop``'s dataloader iterator on resume: mmengine first re-reads the
    ``skip`` batches already trained on (so that the sampler and the data workers' random
    augmentations reach the same place); with ``num_workers=0`` that runs the pipeline, and its
    random transforms, in this process. The saved states are therefore installed only right
    before the first new batch is read, then the loop gets its own iterator back."""

    def __init__(self, loop, skip: int, state: dict):
        self._loop, self._inner, self._skip, self._state = loop, internals.dataloader_iterator(loop), skip, state

    def __iter__(self):
        return self

    def __next__(self):
        if self._skip > 0:
            self._skip -= 1
            return next(self._inner)
        set_rng_state(self._state)
        internals.set_dataloader_iterator(self._loop, self._inner)
        return next(self._inner)


class DiNATRNGStateHook(Hook):
    """Makes ``--resume`` continue the random streams of the interrupted run.

    mmengine's resume restores the weights, optimizer, schedulers, counters and the seed, and
    replays the sampler (``InfiniteSampler`` / ``DefaultSampler`` are seeded, and an iteration
    -based loop re-reads the batches already trained on), but not the generators' states: the
    resumed run draws new drop-path masks, RPN / RoI samples and flips, and its losses drift from
    the uninterrupted run's. This hook saves every rank's python / numpy / torch / CUDA states
    into ``checkpoint['meta']['rng_states']`` (under DDP gathered from every rank in the hook step
    before ``CheckpointHook`` saves: only the main process writes) and, on resume, gives each rank
    its own back, right before the first new batch is read. Validation inside training is made
    neutral for the generators (their states are put back after it), so that a run resumed from a
    checkpoint written just before a validation follows the uninterrupted one too.

    Restored only when resuming (the loop's counters equal the checkpoint's); loading weights with
    ``load_from`` starts the streams from the seed as usual. A checkpoint written by another number
    of processes is resumed without them, with a warning. ``tools/train.py`` adds the hook to every
    config; with mmdet's / mmseg's own tools see :mod:`dinat_backbone.mm.enable_training`. Together
    with ``randomness=dict(seed=0, deterministic=True)`` (deterministic CUDA kernels) a resumed
    run reproduces the uninterrupted one as far as the kernels are deterministic.
    """

    META_KEY = "rng_states"
    # after the other hooks of an iteration / epoch, right before CheckpointHook (VERY_LOW) saves
    priority = "LOW"

    def __init__(self):
        self._pending: Optional[tuple] = None  # (epoch, iter, per-rank states or None) of a loaded checkpoint
        self._gathered: Optional[list] = None  # every rank's states for the checkpoint about to be saved
        self._outside_val: Optional[dict] = None  # the training streams while a validation runs

    # -- saving ----------------------------------------------------------------------------------
    def before_run(self, runner) -> None:
        # an mmengine without the internals this hook reads fails here, not at the first checkpoint
        internals.checkpoint_hooks(runner)

    def _gather_if_saving(self, saves: bool) -> None:
        """Only the main process writes a checkpoint (``Runner.save_checkpoint`` is master-only), so
        every rank hands its states over here, in the hook step before CheckpointHook's, in exactly
        the iterations / epochs in which it saves (its own test: the same on every rank)."""
        from mmengine.dist import all_gather_object, get_world_size

        if saves and get_world_size() > 1:
            self._gathered = all_gather_object(rng_state())

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._gather_if_saving(internals.saves_after_train_iter(runner))

    def after_train_epoch(self, runner) -> None:
        self._gather_if_saving(internals.saves_after_train_epoch(runner))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        from mmengine.dist import get_world_size

        if self._gathered is not None:
            states, self._gathered = self._gathered, None
        else:  # one process, or a save the gathering did not foresee (e.g. a best checkpoint under DDP)
            # a best checkpoint written during validation: the training streams from before it
            state = self._outside_val if self._outside_val is not None else rng_state()
            states = [state]
            if get_world_size() > 1:
                runner.logger.warning("DiNATRNGStateHook: this checkpoint holds only the main process's "
                                      "random generator states; resuming from it will not restore them")
        checkpoint.setdefault("meta", {})[self.META_KEY] = states

    # -- resuming --------------------------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.get("meta", {})
        self._pending = (meta.get("epoch"), meta.get("iter"), meta.get(self.META_KEY))

    def before_train(self, runner) -> None:
        loop = runner.train_loop
        internals.check_train_loop(loop)  # in every run: a fresh one would fail only when resumed
        if self._pending is None:
            return
        epoch, iteration, states = self._pending
        self._pending = None
        if (epoch, iteration) != (loop.epoch, loop.iter):
            return  # load_from (weights only), not a resume
        if states is None:
            runner.logger.warning("DiNATRNGStateHook: the checkpoint holds no random generator states (written "
                                  "without this hook); the resumed run draws other random numbers than the "
                                  "interrupted one would have")
            return
        from mmengine.dist import get_rank, get_world_size

        if len(states) != get_world_size():
            runner.logger.warning(
                f"DiNATRNGStateHook: the checkpoint holds the random generator states of {len(states)} "
                f"process(es), this run has {get_world_size()}; resuming without them (the run will not "
                "follow the interrupted one exactly)")
            return
        state = states[get_rank()]
        if internals.replays_trained_batches(loop):
            internals.set_dataloader_iterator(loop, _RestoreBeforeNextBatch(loop, loop.iter, state))
        else:
            set_rng_state(state)
        runner.logger.info(f"DiNATRNGStateHook: random generator states of iteration {iteration} restored")

    def before_val(self, runner) -> None:
        self._outside_val = rng_state()

    def after_val(self, runner) -> None:
        if self._outside_val is not None:
            set_rng_state(self._outside_val)
            self._outside_val = None
