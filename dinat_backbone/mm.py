"""OpenMMLab glue: registers DiNAT / NAT / DiNAT_s with mmdet 3.x and mmsegmentation 1.x.

Configs load it with::

    custom_imports = dict(imports=['dinat_backbone.mm'], allow_failed_imports=False)

What importing this module does:

* registers ``DiNAT``, ``NAT`` and ``DiNAT_s`` in ``mmdet.registry.MODELS`` and
  ``mmseg.registry.MODELS`` (whichever of the two is installed; at least one must be). The
  registered classes are thin subclasses of the core models (:class:`dinat_backbone.dinat.DiNAT`
  / ``NAT``, :class:`dinat_backbone.dinat_s.DiNAT_s`): same modules,
  same ``state_dict`` keys; they only add mmengine-style ``init_cfg`` handling (``Pretrained``
  goes through :func:`dinat_backbone.checkpoint.load_pretrained` with automatic format
  conversion; other initialiser types go through ``mmengine.model.initialize``) and accept
  mmseg's legacy ``pretrained=`` argument;
* registers :class:`DiNATLayerDecayOptimizerConstructor` (layer-wise or stage-wise learning-rate
  decay that understands ``backbone.patch_embed`` / ``backbone.levels.i.blocks.j`` (DiNAT_s:
  ``layers``) / ``backbone.levels.i.downsample`` / ``backbone.norm{i}``) in mmengine's root
  ``OPTIM_WRAPPER_CONSTRUCTORS`` (visible from the mmdet and mmseg scopes);
* registers :class:`DiNATChannelCheckHook` in mmengine's root ``HOOKS``: before a run it calls
  :func:`check_neck_channels`, which says which channels the backbone emits when the neck's (or
  the decode heads') ``in_channels`` do not match them (``tools/train.py`` / ``tools/test.py``
  add the hook to every config; mmdet itself only fails later, with a bare assertion or a
  convolution shape error);
* registers :class:`DiNATRNGStateHook` in ``HOOKS``: it saves the random generators' states
  into checkpoints and restores them on ``--resume`` (``tools/train.py`` adds it too), so that a
  resumed run follows the uninterrupted one;
* registers :class:`CPUDistributedDataParallel` in mmengine's ``MODEL_WRAPPERS``: mmengine 0.10.7
  always passes ``device_ids=[LOCAL_RANK]`` to DDP, which torch rejects for CPU modules; this
  wrapper drops it for CPU modules (``tools/train.py`` selects it for gloo runs on CPU);
* adds exactly the classes mmengine 0.10.7 checkpoints need to ``torch.load``'s ``weights_only``
  allow-list (torch >= 2.6 loads with ``weights_only=True`` by default, and ``--resume`` failed on
  ``HistoryBuffer`` and numpy arrays / scalars in the message hub). ``weights_only`` itself is
  never turned off.

The core package (``dinat_backbone``, ``dinat_backbone.dinat``, ...) never imports this module
or any mm package.
"""
from __future__ import annotations

import copy
import importlib
import pickle
import re
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from . import dinat as _core
from . import dinat_s as _core_s

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
    "get_layer_id",
    "mm_safe_globals",
    "REGISTERED_IN",
]

#: names of the mm packages whose MODELS registry holds DiNAT / NAT / DiNAT_s after import
REGISTERED_IN: List[str] = []


def _optional_import(name: str):
    """Import ``name``; return None only when its top-level package is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        top = name.split(".")[0]
        if e.name is not None and (e.name == top or e.name.startswith(top + ".")):
            return None
        raise  # installed but broken (e.g. a missing dependency of mmdet): do not hide it


_mmdet_registry = _optional_import("mmdet.registry")
_mmseg_registry = _optional_import("mmseg.registry")
if _mmdet_registry is None and _mmseg_registry is None:
    raise ImportError(
        "dinat_backbone.mm registers the backbone with mmdet / mmsegmentation, but neither is "
        "installed. Install the stack with `bash tools/install.sh` (or `make install`)."
    )

from mmengine.logging import MMLogger  # noqa: E402
from mmengine.model import MMDistributedDataParallel, initialize  # noqa: E402
from mmengine.optim import DefaultOptimWrapperConstructor  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.registry import HOOKS, MODEL_WRAPPERS, OPTIM_WRAPPER_CONSTRUCTORS  # noqa: E402


# ----------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------
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

    * ``init_cfg=dict(type='Pretrained', checkpoint=path_or_url)``: the core model keeps it and
      its ``init_weights()`` loads the checkpoint through ``dinat_backbone.checkpoint`` (any
      supported format: ImageNet ``.pth``, mmdet/mmseg detector/segmentor checkpoints, HF
      transformers, mmengine wrappers). mmengine's ``prefix`` / ``map_location`` keys are
      accepted: the format conversion finds the backbone weights itself, checkpoints are read on
      the CPU.
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
            core_cfg = {k: pretrained_cfg[k] for k in ("type", "checkpoint", "prefix", "map_location")
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

    def init_weights(self):
        """Random init, then mmengine initialisers (if any), then the Pretrained checkpoint (if any).

        Checkpoint loading is the core's :func:`load_pretrained` (format conversion, rpb resizing,
        shape checks), logging missing / unexpected keys to the mmengine logger.
        """
        from .checkpoint import load_pretrained

        self._init_random_weights()
        if self._mm_other_init_cfgs:
            initialize(self, copy.deepcopy(self._mm_other_init_cfgs))
        cfg = self.init_cfg
        if cfg is not None:
            logger = MMLogger.get_current_instance()
            logger.info(f"{type(self).__name__}: loading pretrained weights from {cfg['checkpoint']}")
            load_pretrained(self, cfg["checkpoint"], strict=False, logger=logger, prefix=cfg.get("prefix"),
                            map_location=cfg.get("map_location", "cpu"))
        self._freeze_stages()
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


for _name, _reg in (("mmdet", _mmdet_registry), ("mmseg", _mmseg_registry)):
    if _reg is not None:
        for _cls in (DiNAT, NAT, DiNAT_s):
            _reg.MODELS.register_module(name=_cls.__name__, module=_cls, force=True)
        REGISTERED_IN.append(_name)


# ----------------------------------------------------------------------------------------------
# Backbone / neck channel check
# ----------------------------------------------------------------------------------------------
def _head_mismatch(head: nn.Module, emits: List[int]) -> Optional[str]:
    """What an mmseg decode head reads (``in_index``, ``input_transform``) against ``in_channels``."""
    in_channels, in_index = getattr(head, "in_channels", None), getattr(head, "in_index", None)
    if in_channels is None or in_index is None:
        return None
    indices = [in_index] if isinstance(in_index, int) else list(in_index)
    if any(not -len(emits) <= i < len(emits) for i in indices):
        return f"reads in_index={in_index}, but the backbone returns {len(emits)} maps"
    selected = [emits[i] for i in indices]
    if getattr(head, "input_transform", None) == "resize_concat":
        wanted = sum(selected)
    else:
        wanted = selected[0] if isinstance(in_channels, int) and len(selected) == 1 else selected
    if (list(in_channels) if isinstance(in_channels, (list, tuple)) else in_channels) != wanted:
        return f"reads in_index={in_index} ({wanted} channels) but has in_channels={in_channels}"
    return None


def _pixel_decoder_in_channels(head: nn.Module) -> Optional[List[int]]:
    """The ``in_channels`` a Mask2Former / MaskFormer head's pixel decoder was built for (mmdet's
    ``MSDeformAttnPixelDecoder``, also inside mmseg's head): its 1x1 input convolutions, coarsest
    level first, then the FPN laterals, coarsest first. None for other heads."""
    decoder = getattr(head, "pixel_decoder", None)
    convs = list(getattr(decoder, "input_convs", [])) + list(getattr(decoder, "lateral_convs", []))
    if not convs or not all(hasattr(getattr(c, "conv", None), "in_channels") for c in convs):
        return None
    return [c.conv.in_channels for c in convs][::-1]


def check_neck_channels(model: nn.Module) -> None:
    """ValueError when the channels a DiNAT / NAT / DiNAT_s backbone of an mmdet / mmseg model
    emits (``backbone.out_channels``) are not the ``in_channels`` of its neck, or, without a
    neck, of its decode / auxiliary heads (for their ``in_index``) or its Mask2Former pixel
    decoder. Models without such a backbone are left alone."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, _core.DiNATBackboneBase):
        return
    emits = list(backbone.out_channels)
    what = (f"the backbone {type(backbone).__name__}(arch={backbone.arch!r}, embed_dim={backbone.embed_dim}) "
            f"emits {emits} channels (outputs {backbone.out_features})")
    neck = getattr(model, "neck", None)
    if neck is not None:
        first = neck[0] if isinstance(neck, nn.Sequential) else neck
        expected = getattr(first, "in_channels", None)
        if isinstance(expected, (list, tuple)) and list(expected) != emits:
            raise ValueError(f"{what}, but the neck {type(first).__name__} has in_channels={list(expected)}; set "
                             f"neck.in_channels={emits} in the config (or the backbone's out_indices)")
        return
    for attr in ("panoptic_head", "decode_head"):  # Mask2Former (mmdet / mmseg)
        expected = _pixel_decoder_in_channels(getattr(model, attr, None))
        if expected is not None and expected != emits:
            raise ValueError(f"{what}, but the {attr}'s pixel decoder was built for in_channels={expected}; set "
                             f"{attr}.in_channels={emits} in the config (or the backbone's out_indices)")
    for attr in ("decode_head", "auxiliary_head"):
        heads = getattr(model, attr, None)
        for head in heads if isinstance(heads, nn.ModuleList) else [heads]:
            problem = None if head is None else _head_mismatch(head, emits)
            if problem:
                raise ValueError(f"{what}, but the {attr} {type(head).__name__} {problem}; set {attr}.in_channels "
                                 "(and in_index) in the config to match")


@HOOKS.register_module(force=True)
class DiNATChannelCheckHook(Hook):
    """Runs :func:`check_neck_channels` on the runner's model before training, validation or
    testing: a neck built for another backbone width fails at once, naming the channels."""

    def before_run(self, runner) -> None:
        model = runner.model
        check_neck_channels(getattr(model, "module", model))  # under a DDP wrapper: the model inside


# ----------------------------------------------------------------------------------------------
# Reproducible resume: the random number generators' states in the checkpoint
# ----------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """This process's python / numpy / torch (and CUDA, once initialised) generator states, as
    plain containers and tensors (what ``torch.load(weights_only=True)`` reads without an
    allow-list entry)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    import random

    import numpy as np

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
        self._loop, self._inner, self._skip, self._state = loop, loop.dataloader_iterator, skip, state

    def __iter__(self):
        return self

    def __next__(self):
        if self._skip > 0:
            self._skip -= 1
            return next(self._inner)
        set_rng_state(self._state)
        self._loop.dataloader_iterator = self._inner
        return next(self._inner)


@HOOKS.register_module(force=True)
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
    config; with mmdet's own tools add ``custom_hooks=[dict(type='DiNATRNGStateHook')]``. Together
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
    @staticmethod
    def _checkpoint_hooks(runner) -> list:
        from mmengine.hooks import CheckpointHook

        return [h for h in runner.hooks if isinstance(h, CheckpointHook)]

    def _gather_if_saving(self, saves: bool) -> None:
        """Only the main process writes a checkpoint (``Runner.save_checkpoint`` is master-only), so
        every rank hands its states over here, in the hook step before CheckpointHook's, in exactly
        the iterations / epochs in which it saves (its own test: the same on every rank)."""
        from mmengine.dist import all_gather_object, get_world_size

        if saves and get_world_size() > 1:
            self._gathered = all_gather_object(rng_state())

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._gather_if_saving(any(
            not h.by_epoch and (h.every_n_train_iters(runner, h.interval, h.save_begin)
                                or (h.save_last and h.is_last_train_iter(runner)))
            for h in self._checkpoint_hooks(runner)))

    def after_train_epoch(self, runner) -> None:
        self._gather_if_saving(any(
            h.by_epoch and (h.every_n_epochs(runner, h.interval, h.save_begin)
                            or (h.save_last and h.is_last_train_epoch(runner)))
            for h in self._checkpoint_hooks(runner)))

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
        if self._pending is None:
            return
        epoch, iteration, states = self._pending
        self._pending = None
        loop = runner.train_loop
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
        if hasattr(loop, "dataloader_iterator") and loop.iter > 0:  # IterBasedTrainLoop: replays batches
            loop.dataloader_iterator = _RestoreBeforeNextBatch(loop, loop.iter, state)
        else:
            set_rng_state(state)
        runner.logger.info(f"DiNATRNGStateHook: random generator states of iteration {iteration} restored")

    def before_val(self, runner) -> None:
        self._outside_val = rng_state()

    def after_val(self, runner) -> None:
        if self._outside_val is not None:
            set_rng_state(self._outside_val)
            self._outside_val = None


# ----------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay
# ----------------------------------------------------------------------------------------------
# DiNAT / NAT stages are ``levels``, DiNAT_s stages ``layers``
_BLOCK_RE = re.compile(r"(?:^|\.)(?:levels|layers)\.(\d+)\.blocks\.(\d+)\.")
_DOWN_RE = re.compile(r"(?:^|\.)(?:levels|layers)\.(\d+)\.downsample\.")
_STAGES = ("levels.", "layers.")


def get_layer_id(name: str, depths, decay_type: str = "layer_wise", prefix: str = "backbone.") -> int:
    """Layer id of parameter ``name`` of a model with a DiNAT backbone under ``prefix``.

    ``layer_wise`` (ids ``0 .. L+1`` for ``L = sum(depths)`` blocks): ``patch_embed`` 0; block ``j``
    of stage ``i`` ``1 + sum(depths[:i]) + j``; ``levels.i.downsample`` (between stage ``i`` and
    ``i+1``) the id of the first block of stage ``i+1``; the output norms ``norm{i}`` and
    everything outside the backbone (neck, heads) ``L + 1``.

    ``stage_wise`` (ids ``0 .. 5``): ``patch_embed`` 0; stage ``i``'s blocks ``i + 1``;
    ``levels.i.downsample`` ``i + 2``; the rest 5.
    """
    depths = list(depths)
    total = sum(depths)
    last = total + 1 if decay_type == "layer_wise" else len(depths) + 1
    if not name.startswith(prefix):
        return last
    name = name[len(prefix):]
    if name.startswith("patch_embed."):
        return 0
    m = _BLOCK_RE.match("." + name) or _BLOCK_RE.search(name)
    if m and name.startswith(_STAGES):
        i, j = int(m.group(1)), int(m.group(2))
        return 1 + sum(depths[:i]) + j if decay_type == "layer_wise" else i + 1
    m = _DOWN_RE.search("." + name)
    if m and name.startswith(_STAGES):
        i = int(m.group(1))
        return 1 + sum(depths[: i + 1]) if decay_type == "layer_wise" else i + 2
    return last  # norm{i} and anything else in the backbone: feeds the neck directly


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class DiNATLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise (or stage-wise) learning-rate decay for models with a DiNAT / NAT backbone.

    ``lr = base_lr * decay_rate ** (num_layers + 1 - layer_id)`` with the ids of
    :func:`get_layer_id` (so the heads and neck train at ``base_lr``, the patch embedding at the
    smallest rate). Usage::

        optim_wrapper = dict(
            type='OptimWrapper',
            constructor='DiNATLayerDecayOptimizerConstructor',
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
            paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise',
                               custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))

    ``paramwise_cfg`` keys: ``decay_rate`` (required), ``decay_type`` ('layer_wise' default or
    'stage_wise'), ``num_layers`` (optional: defaults to the backbone's block count, or 4 stages),
    ``backbone_prefix`` (default 'backbone.'), ``custom_keys`` (mmengine semantics: the longest
    matching key's ``lr_mult`` / ``decay_mult`` multiply on top of the layer decay). Without
    custom keys, 1-D parameters (norms, biases, layer-scale gammas) and ``rpb`` tables get no
    weight decay. Frozen parameters (``requires_grad=False``) are left out. The backbone's
    depths are read from the model (``backbone.levels[i].blocks``); a model without a DiNAT-like
    backbone is an error.
    """

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        cfg = dict(self.paramwise_cfg)
        if "decay_rate" not in cfg:
            raise ValueError("DiNATLayerDecayOptimizerConstructor needs paramwise_cfg['decay_rate']")
        decay_rate = float(cfg["decay_rate"])
        decay_type = cfg.get("decay_type", "layer_wise")
        if decay_type not in ("layer_wise", "stage_wise"):
            raise ValueError(f"decay_type must be 'layer_wise' or 'stage_wise', got {decay_type!r}")
        prefix = cfg.get("backbone_prefix", "backbone.")
        backbone = module
        for part in prefix.rstrip(".").split(".") if prefix else []:
            backbone = getattr(backbone, part, None)
            if backbone is None:
                break
        levels = getattr(backbone, "stages", None)  # DiNATBackboneBase: levels (DiNAT / NAT), layers (DiNAT_s)
        if levels is None:
            levels = getattr(backbone, "levels", None)
        if levels is None or not all(hasattr(lv, "blocks") for lv in levels):
            raise ValueError(
                f"DiNATLayerDecayOptimizerConstructor: the model has no DiNAT/NAT backbone (nor DiNAT_s) at "
                f"'{prefix}' (expected '{prefix}levels.i.blocks.j' or '{prefix}layers.i.blocks.j'); got "
                f"{type(backbone).__name__}"
            )
        depths = [len(lv.blocks) for lv in levels]
        default_layers = sum(depths) if decay_type == "layer_wise" else len(depths)
        num_layers = int(cfg.get("num_layers", default_layers))
        custom_keys: Dict[str, dict] = dict(cfg.get("custom_keys", {}))
        sorted_keys = sorted(custom_keys, key=len, reverse=True)
        base_lr = self.base_lr
        base_wd = self.base_wd or 0.0

        groups: Dict[tuple, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer_id = get_layer_id(name, depths, decay_type, prefix)
            layer_id = min(layer_id, num_layers + 1)
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
        logger = MMLogger.get_current_instance()
        logger.info(
            f"DiNATLayerDecayOptimizerConstructor: {decay_type}, decay_rate={decay_rate}, "
            f"num_layers={num_layers}, depths={depths}, {len(groups)} parameter groups"
        )
        params.extend(groups[k] for k in sorted(groups))


# ----------------------------------------------------------------------------------------------
# CPU DDP (gloo)
# ----------------------------------------------------------------------------------------------
@MODEL_WRAPPERS.register_module(force=True)
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also works for CPU modules (gloo).

    mmengine 0.10.7's runner always passes ``device_ids=[LOCAL_RANK]``; torch's DDP rejects
    ``device_ids`` for CPU modules. This drops them when the module lives on the CPU and is
    otherwise mmengine's wrapper unchanged.
    """

    def __init__(self, module, device_ids=None, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        if on_cpu:
            device_ids = None
            kwargs.pop("output_device", None)
        super().__init__(module=module, device_ids=device_ids, **kwargs)


# ----------------------------------------------------------------------------------------------
# torch.load(weights_only=True) allow-list for mmengine 0.10.7 checkpoints
# ----------------------------------------------------------------------------------------------
_HB_STATS = ("min", "max", "current", "mean")
#: numpy dtypes found in mmengine / mmdet / mmseg training checkpoints (message hub)
_CHECKPOINT_DTYPES = ("float64", "int64")


def _history_buffer_getattr(obj, name):
    """Stand-in for ``builtins.getattr`` while unpickling with ``weights_only=True``.

    mmengine checkpoints pickle ``HistoryBuffer``'s statistics functions as
    ``getattr(HistoryBuffer, 'mean')`` (protocol-2 pickling of a nested qualname). Only exactly
    that is allowed: the class ``HistoryBuffer`` and the name of one of its registered statistics.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed = set(_HB_STATS) | set(getattr(HistoryBuffer, "_statistics_methods", {}))
    if obj is HistoryBuffer and isinstance(name, str) and name in allowed:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f"weights_only load: getattr({obj!r}, {name!r}) is not allowed (dinat_backbone.mm allows only "
        f"getattr(HistoryBuffer, <statistics method>) for mmengine checkpoints)"
    )


def mm_safe_globals() -> list:
    """Exactly the globals an mmengine 0.10.7 training checkpoint pickles besides tensors.

    Found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on real checkpoints
    written by ``tools/train.py`` (numpy 1.26 and numpy 2.x): the message hub stores
    ``HistoryBuffer`` objects holding numpy arrays (``_reconstruct``, ``ndarray``, ``dtype``) and
    numpy scalars (``scalar``), and references the buffer's statistics methods through
    ``builtins.getattr``, which is served by :func:`_history_buffer_getattr` (only
    ``getattr(HistoryBuffer, 'min' | 'max' | 'current' | 'mean' | registered)``, never the real
    ``getattr``). Entries are objects or ``(object, pickled_name)`` pairs; numpy 1.x pickles
    ``numpy.core.multiarray.*``, numpy 2.x ``numpy._core.multiarray.*``: both names are mapped to
    the installed numpy's functions, so a checkpoint written under either numpy resumes.
    """
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    numpy2 = int(np.__version__.split(".")[0]) >= 2
    multiarray = importlib.import_module("numpy._core.multiarray" if numpy2 else "numpy.core.multiarray")
    out = [HistoryBuffer, (_history_buffer_getattr, "builtins.getattr")]
    # the same two functions under both spellings: checkpoints written under either numpy load
    for pickled_module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out.append((multiarray._reconstruct, f"{pickled_module}._reconstruct"))
        out.append((multiarray.scalar, f"{pickled_module}.scalar"))
    out += [np.ndarray, np.dtype]
    # numpy >= 1.25 builds dtype instances of per-type classes (numpy.dtypes.Float64DType, ...);
    # the unpickler's BUILD step needs the classes of the dtypes the checkpoint holds:
    # HistoryBuffer arrays (float64 values, int64 counts) and the scalar metrics.
    for t in _CHECKPOINT_DTYPES:
        cls = type(np.dtype(t))
        if cls is not np.dtype:
            out.append(cls)
    return out


def _register_safe_globals() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # torch < 2.4: weights_only is not the default there anyway
        return
    add(mm_safe_globals())


_register_safe_globals()
