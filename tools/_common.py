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
    """Import the task package (fails loudly when it is not installed) and the DiNAT glue."""
    import importlib

    importlib.import_module(scope)
    import dinat_backbone.mm  # noqa: F401  (registers DiNAT/NAT, LR-decay constructor, safe globals)


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
    part tools/train.py and tools/test.py share); imports the config's mm scope and adds
    ``DiNATChannelCheckHook`` and ``DiNATRNGStateHook``. Returns ``(cfg, scope)``."""
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    scope = scope_of(cfg)
    import_scope(scope)
    # a neck / head built for another backbone width fails before the run, naming the channels;
    # checkpoints carry the random generators' states, so that --resume continues them
    hooks = list(cfg.get("custom_hooks", None) or [])
    for hook in ("DiNATChannelCheckHook", "DiNATRNGStateHook"):
        if not any(h.get("type") == hook for h in hooks):
            hooks.append(dict(type=hook))
    cfg.custom_hooks = hooks
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
