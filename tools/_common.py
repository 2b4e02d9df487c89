"""Shared set-up for tools/train.py and tools/test.py (mmdet or mmseg, picked from the config)."""
from __future__ import annotations

import os
import warnings

import torch


def scope_of(cfg) -> str:
    """'mmdet' or 'mmseg', from the config's ``default_scope`` (mmdet's default when unset)."""
    scope = cfg.get("default_scope", None) or "mmdet"
    if scope not in ("mmdet", "mmseg"):
        raise ValueError(f"config default_scope must be 'mmdet' or 'mmseg', got {scope!r}")
    return scope


def import_scope(scope: str) -> None:
    """Import the task package (fails loudly when it is not installed) and the DiNAT glue (which
    registers the backbones, the channel check and the layer-decay constructor)."""
    import importlib

    importlib.import_module(scope)
    import dinat_backbone.mm  # noqa: F401


def _init_cpu_process_group(launcher: str) -> None:
    """Initialise a gloo process group for CPU-only machines.

    mmengine 0.10.7's ``init_dist`` calls ``torch.cuda.set_device`` first, which a CPU build of
    torch does not have; the runner skips its own ``init_dist`` when a group already exists.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if launcher == "slurm":
        proc_id = int(os.environ["SLURM_PROCID"])
        ntasks = int(os.environ["SLURM_NTASKS"])
        node_list = os.environ["SLURM_NODELIST"]
        import subprocess

        addr = subprocess.getoutput(f"scontrol show hostname {node_list} | head -n1")
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("MASTER_ADDR", addr)
        os.environ["WORLD_SIZE"] = str(ntasks)
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        os.environ["RANK"] = str(proc_id)
    dist.init_process_group(backend="gloo")


def adapt_to_machine(cfg, launcher: str) -> None:
    """Make a GPU recipe runnable on a machine without CUDA (nothing changes where CUDA exists).

    * distributed runs use gloo and :class:`dinat_backbone.mm.CPUDistributedDataParallel`
      (mmengine's DDP wrapper minus the ``device_ids`` torch rejects for CPU modules);
    * ``AmpOptimWrapper`` (mmengine asserts a GPU for it) falls back to fp32 ``OptimWrapper``.
    """
    if torch.cuda.is_available():
        return
    if cfg.get("optim_wrapper", None) is not None and cfg.optim_wrapper.get("type") == "AmpOptimWrapper":
        warnings.warn("no CUDA device: mmengine's AmpOptimWrapper needs one; training in fp32 (OptimWrapper)")
        cfg.optim_wrapper.type = "OptimWrapper"
        for key in ("loss_scale", "dtype", "use_fsdp"):
            cfg.optim_wrapper.pop(key, None)
    if launcher != "none":
        env_cfg = cfg.setdefault("env_cfg", {})
        env_cfg.setdefault("dist_cfg", {})
        env_cfg["dist_cfg"]["backend"] = "gloo"
        if cfg.get("model_wrapper_cfg", None) is None:
            cfg.model_wrapper_cfg = dict(type="CPUDistributedDataParallel")
        if launcher in ("pytorch", "slurm"):
            _init_cpu_process_group(launcher)


def default_work_dir(config_path: str) -> str:
    return os.path.join("./work_dirs", os.path.splitext(os.path.basename(config_path))[0])


def load_config(args):
    """Config from ``args.config`` with the launcher, ``--cfg-options`` and work dir applied (the
    part tools/train.py and tools/test.py share); imports the config's mm scope and sets up the
    training infrastructure (:func:`dinat_backbone.mm.setup_training`: the checkpoint allow-list,
    the CPU DDP wrapper, ``DiNATChannelCheckHook`` and ``DiNATRNGStateHook`` in the config).
    Returns ``(cfg, scope)``."""
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    scope = scope_of(cfg)
    import_scope(scope)
    # a neck / head built for another backbone width fails before the run, naming the channels;
    # checkpoints carry the random generators' states, so that --resume continues them, and load
    # with torch's weights_only
    import dinat_backbone.mm

    dinat_backbone.mm.setup_training(cfg)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = default_work_dir(args.config)
    return cfg, scope


# ----------------------------------------------------------------------------------------------
# --model / --arch / --dilations of the torch-only tools (extract_features, convert_checkpoint,
# export_onnx), read from the families' own tables
# ----------------------------------------------------------------------------------------------
def add_model_arguments(parser, dilations_default=None, arch_help="variant (default: the family's smallest)",
                        model_default="dinat", with_dilations=True):
    """``--model`` (a key of :data:`dinat_backbone.MODEL_FAMILIES`), ``--arch`` and ``--dilations``
    with the choices of every family's ``arch_settings`` / ``dilation_presets``; check the
    combination with :func:`model_choice`."""
    from dinat_backbone import MODEL_FAMILIES

    archs = list(dict.fromkeys(a for cls in MODEL_FAMILIES.values() for a in cls.arch_settings))
    presets = list(dict.fromkeys(p for cls in MODEL_FAMILIES.values() for p in cls.dilation_presets))
    families = ", ".join(f"{name}: {', '.join(cls.arch_settings)}" for name, cls in MODEL_FAMILIES.items())
    parser.add_argument("--model", default=model_default, choices=list(MODEL_FAMILIES),
                        help="backbone family: dinat, nat (every dilation 1) or dinat_s (Swin layout); default "
                             f"{model_default or 'the family of the file'}")
    parser.add_argument("--arch", default=None, choices=archs, help=f"{arch_help} ({families})")
    if not with_dilations:
        return
    parser.add_argument("--dilations", default=dilations_default, choices=presets + ["none"],
                        help=f"dilation preset of the family (default: {dilations_default or 'none'}, i.e. "
                             f"{'that preset' if dilations_default else 'all 1'}; ignored for nat)")


def model_choice(parser, args, need_arch: bool = True):
    """``(model class, constructor kwargs)`` from the arguments of :func:`add_model_arguments`;
    an arch or preset the family does not have is a usage error listing the family's choices."""
    from dinat_backbone import MODEL_FAMILIES

    cls = MODEL_FAMILIES[args.model]
    arch = args.arch if args.arch is not None else (cls.default_arch if need_arch else None)
    if arch is not None and arch not in cls.arch_settings:
        parser.error(f"--arch {arch}: {args.model} has {', '.join(cls.arch_settings)}")
    kwargs = {"arch": arch} if arch is not None else {}
    dilations = getattr(args, "dilations", None)
    if args.model != "nat" and dilations not in (None, "none"):
        if dilations not in cls.dilation_presets:
            parser.error(f"--dilations {dilations}: {args.model} has {', '.join(cls.dilation_presets)}")
        kwargs["dilations"] = dilations
    return cls, kwargs


# ----------------------------------------------------------------------------------------------
# paths checked before anything is built: a missing file is one line naming it and the fix,
# not a traceback from deep inside mmengine after minutes of model building
# ----------------------------------------------------------------------------------------------
def _is_remote(path) -> bool:
    return "://" in str(path)


def check_file(path: str, what: str, tool: str) -> None:
    """Exit with ``<tool>: <what> not found: <path>`` unless ``path`` is a file (URLs pass)."""
    if path and not _is_remote(path) and not os.path.isfile(path):
        hint = " (a folder: give the file inside it)" if os.path.isdir(path) else ""
        raise SystemExit(f"{tool}: {what} not found: {path}{hint}")


def _dataset_paths(dataset, key):
    """``(config key, path)`` for every local path a dataset config reads, joined with its
    ``data_root`` as mmengine's ``BaseDataset`` does; wrappers (``dataset`` / ``datasets``) are
    followed."""
    if not isinstance(dataset, dict):
        return
    if isinstance(dataset.get("dataset"), dict):
        yield from _dataset_paths(dataset["dataset"], f"{key}.dataset")
    for i, inner in enumerate(dataset.get("datasets", None) or []):
        yield from _dataset_paths(inner, f"{key}.datasets.{i}")
    root = dataset.get("data_root", None) or ""
    if not isinstance(root, str) or _is_remote(root):
        return
    if root:
        yield f"{key}.data_root", root
    ann = dataset.get("ann_file", None)
    if isinstance(ann, str) and ann:
        yield f"{key}.ann_file", os.path.join(root, ann)
    prefix = dataset.get("data_prefix", None) or {}
    if isinstance(prefix, dict):
        for name, sub in prefix.items():
            if isinstance(sub, str) and sub:
                yield f"{key}.data_prefix.{name}", os.path.join(root, sub)


def _evaluator_paths(evaluator, key):
    for i, metric in enumerate(evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]):
        if isinstance(metric, dict) and isinstance(metric.get("ann_file", None), str) and metric["ann_file"] \
                and not _is_remote(metric["ann_file"]):
            yield (f"{key}.ann_file" if not isinstance(evaluator, (list, tuple)) else f"{key}.{i}.ann_file",
                   metric["ann_file"])


def missing_data_paths(cfg, phases=("test",)):
    """``[(config key, path)]`` of the dataset files and folders ``phases`` ('train', 'val', 'test')
    read that do not exist."""
    missing = []
    for phase in phases:
        loader = cfg.get(f"{phase}_dataloader", None)
        if loader:
            missing += [(k, p) for k, p in _dataset_paths(loader.get("dataset", None), f"{phase}_dataloader.dataset")
                        if not os.path.exists(p)]
        evaluator = cfg.get(f"{phase}_evaluator", None) if phase != "train" else None
        if evaluator:
            missing += [(k, p) for k, p in _evaluator_paths(evaluator, f"{phase}_evaluator") if not os.path.exists(p)]
    return missing


def check_data_paths(cfg, phases, tool: str) -> None:
    """Exit naming every missing dataset path of ``phases`` and the two ways to fix it (README,
    Datasets): put / symlink the data where the config says, or override the config's paths."""
    missing = missing_data_paths(cfg, phases)
    if not missing:
        return
    roots = {k[: -len(".data_root")]: p for k, p in missing if k.endswith(".data_root")}

    def elsewhere(path):  # the same file under a /path/to/<dataset> root
        for root in roots.values():
            if os.path.normpath(path).startswith(os.path.normpath(root)):
                name = os.path.basename(os.path.normpath(root)) or "data"
                rel = os.path.relpath(path, root)
                return f"/path/to/{name}/" + ("" if rel == "." else rel)
        return "..."

    shown = []  # a file under a missing data_root is fixed with that root: only the root is named
    for k, path in missing:
        owner = k.split(".data_prefix.")[0] if ".data_prefix." in k else k.rsplit(".", 1)[0]
        if k.endswith(".data_root") or owner not in roots:
            shown.append((k, path))
    lines = [f"{tool}: the dataset is not where the config says (paths relative to {os.getcwd()}):"]
    lines += [f"  missing {k}: {path}" for k, path in shown]
    if roots:
        root = os.path.normpath(next(iter(roots.values())))
        parent, name = os.path.dirname(root), os.path.basename(root)
        link = (f"`mkdir -p {parent} && ln -s /path/to/{name} {root}`" if parent else
                f"`ln -s /path/to/{name} {root}`")
        lines.append(f"Put (or symlink) the dataset there, e.g. {link} (layouts: README, Datasets), or point "
                     "the config at it:")
    else:
        lines.append("Put the missing files there (layouts: README, Datasets), or point the config at them:")
    lines.append("  --cfg-options " + " ".join(f"{k}={elsewhere(path)}" for k, path in shown))
    raise SystemExit("\n".join(lines))
