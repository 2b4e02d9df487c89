#!/usr/bin/env python
"""Train a detector (mmdet 3.x) or segmentor (mmseg 1.x) from a config; the same arguments as
mmdet's tools/train.py. The task is picked from the config's ``default_scope``.

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr] [--resume [CKPT]]
                          [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

Distributed: tools/dist_train.sh (torchrun) or tools/slurm_train.sh. On machines without CUDA
the run uses gloo and fp32 (see tools/_common.py). The config, a ``--resume`` checkpoint (present,
readable, holding a training state) and the dataset's files are checked first; a missing or wrong
one is named with the way to fix it.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

from mmengine.config import DictAction  # noqa: E402

import _common  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a detector / segmentor with a DiNAT backbone")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="the dir to save logs and models")
    parser.add_argument("--amp", action="store_true", default=False,
                        help="enable automatic-mixed-precision training")
    parser.add_argument("--auto-scale-lr", action="store_true", help="enable automatically scaling LR.")
    parser.add_argument("--resume", nargs="?", type=str, const="auto",
                        help="resume from the given checkpoint, or (no value) from the latest checkpoint "
                             "in the work directory")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override settings in the config, xxx=yyy format (see mmdet's tools/train.py)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def build_cfg(args):
    cfg, _ = _common.load_config(args)

    if args.amp:
        if cfg.optim_wrapper.get("type", "OptimWrapper") == "AmpOptimWrapper":
            print("[train] AMP is already enabled in the config", flush=True)
        else:
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.loss_scale = "dynamic"

    if args.auto_scale_lr:
        if "auto_scale_lr" in cfg and "enable" in cfg.auto_scale_lr and "base_batch_size" in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise RuntimeError('Can not find "auto_scale_lr" with "enable" and "base_batch_size" in the config')

    if args.resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    _common.adapt_to_machine(cfg, args.launcher)
    return cfg


def check_resume_checkpoint(path: str) -> None:
    """Exit naming the problem unless ``path`` is a checkpoint mmengine's runner can resume from:
    readable by ``torch.load`` as the runner reads it (``weights_only``; the mm scope is imported,
    so the message hub's objects are allowed) and holding the training state (``meta`` with
    ``epoch`` / ``iter``, ``state_dict``). Without it a text file or a weights-only file ended in
    an ``UnpicklingError`` / ``KeyError: 'meta'`` after the model and the data were built."""
    import zipfile

    import torch

    fix = ("give a checkpoint tools/train.py wrote (WORK_DIR/epoch_N.pth or iter_N.pth), or --resume without a "
           "value to continue from the latest one in the work dir")
    try:  # memory-mapped: a large checkpoint is not read twice
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # noqa: BLE001 - any failure to read is reported with the file's name
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SystemExit(f"tools/train.py: --resume {path}: not a checkpoint torch can read "
                         f"({type(e).__name__}: {reason[:200]}); {fix}") from None
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or "epoch" not in meta or "iter" not in meta or "state_dict" not in checkpoint:
        raise SystemExit(f"tools/train.py: --resume {path}: holds no training state (a training checkpoint has "
                         "'meta' with 'epoch' / 'iter' and 'state_dict'); to start a new run from these weights "
                         f"use --cfg-options load_from={path} (or the backbone's init_cfg); to resume, {fix}")


def main(argv=None):
    args = parse_args(argv)
    # paths first: a missing file is one line, not a traceback after the model is built
    _common.check_file(args.config, "config", "tools/train.py")
    if args.resume not in (None, "auto"):
        _common.check_file(args.resume, "--resume checkpoint", "tools/train.py")
    cfg = build_cfg(args)
    if args.resume not in (None, "auto"):  # after build_cfg: the mm scope the runner loads with is imported
        check_resume_checkpoint(args.resume)
    _common.check_data_paths(cfg, ("train", "val") if cfg.get("val_cfg", None) else ("train",), "tools/train.py")
    if cfg.get("load_from", None):  # --resume URL or a config's load_from URL: the whole-URL cache, not mmengine's
        from dinat_backbone.checkpoint.download import local_checkpoint

        cfg.load_from = local_checkpoint(cfg.load_from)
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    runner.train()


if __name__ == "__main__":
    main()
