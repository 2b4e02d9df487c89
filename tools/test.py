#!/usr/bin/env python
"""Test (and evaluate) a detector (mmdet 3.x) or segmentor (mmseg 1.x); the same arguments as
mmdet's tools/test.py. The task is picked from the config's ``default_scope``.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--show] [--show-dir DIR]
                         [--wait-time S] [--cfg-options k=v ...] [--launcher ...] [--tta]

``--out``: mmdet dumps predictions to a .pkl; mmseg writes prediction PNGs to that folder.
``--tta``: mmdet flip TTA / the config's ``tta_model``; mmseg the config's multi-scale + flip
``tta_pipeline`` (the ADE20K "multi-scale" numbers).
"""
import argparse
import os
import os.path as osp
import sys
import warnings
from copy import deepcopy

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

from mmengine.config import ConfigDict, DictAction  # noqa: E402

import _common  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Test (and evaluate) a model with a DiNAT backbone")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="the directory to save the file containing evaluation metrics")
    parser.add_argument("--out", type=str,
                        help="mmdet: dump predictions to a pickle file; mmseg: folder for prediction PNGs")
    parser.add_argument("--show", action="store_true", help="show prediction results")
    parser.add_argument("--show-dir", help="directory where painted images will be saved")
    parser.add_argument("--wait-time", type=float, default=2, help="the interval of show (s)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override settings in the config, xxx=yyy format")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def trigger_visualization_hook(cfg, args):
    default_hooks = cfg.default_hooks
    if "visualization" not in default_hooks:
        raise RuntimeError("VisualizationHook must be included in default_hooks")
    hook = default_hooks["visualization"]
    hook["draw"] = True
    if args.show:
        hook["show"] = True
        hook["wait_time"] = args.wait_time
    if args.show_dir:
        cfg.visualizer["save_dir"] = args.show_dir
    return cfg


def _det_tta(cfg):
    if "tta_model" not in cfg:
        warnings.warn("no tta_model in the config: using flip TTA (DetTTAModel)")
        cfg.tta_model = dict(type="DetTTAModel",
                             tta_cfg=dict(nms=dict(type="nms", iou_threshold=0.5), max_per_img=100))
    if "tta_pipeline" not in cfg:
        test_data_cfg = cfg.test_dataloader.dataset
        while "dataset" in test_data_cfg:
            test_data_cfg = test_data_cfg["dataset"]
        cfg.tta_pipeline = deepcopy(test_data_cfg.pipeline)
        cfg.tta_pipeline[-1] = dict(
            type="TestTimeAug",
            transforms=[[dict(type="RandomFlip", prob=1.0), dict(type="RandomFlip", prob=0.0)],
                        [dict(type="PackDetInputs",
                              meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor",
                                         "flip", "flip_direction"))]])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def _seg_tta(cfg):
    if "tta_pipeline" not in cfg or "tta_model" not in cfg:
        raise RuntimeError("--tta needs tta_model and tta_pipeline in an mmseg config")
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def build_cfg(args):
    cfg, scope = _common.load_config(args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        (_det_tta if scope == "mmdet" else _seg_tta)(cfg)
    if args.out is not None and scope == "mmseg":
        cfg.test_evaluator["output_dir"] = args.out
        cfg.test_evaluator["keep_results"] = True
    _common.adapt_to_machine(cfg, args.launcher)
    return cfg, scope


def main(argv=None):
    args = parse_args(argv)
    cfg, scope = build_cfg(args)
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    if args.out is not None and scope == "mmdet":
        if not args.out.endswith((".pkl", ".pickle")):
            raise SystemExit("--out must be a .pkl file for mmdet configs")
        from mmdet.evaluation import DumpDetResults

        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    return runner.test()


if __name__ == "__main__":
    main()
