#!/usr/bin/env python
"""Test (and evaluate) a detector (mmdet 3.x) or segmentor (mmseg 1.x); the same arguments as
mmdet's tools/test.py. The task is picked from the config's ``default_scope``.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--show] [--show-dir DIR]
                         [--wait-time S] [--cfg-options k=v ...] [--launcher ...] [--tta]

``--out``: mmdet dumps predictions to a .pkl; mmseg writes prediction PNGs to that folder.
``--show-dir DIR``: painted predictions, in each library's own layout (printed at the end): mmdet
``WORK_DIR/TIMESTAMP/DIR/<image file name>`` (as mmdet's tools/test.py), mmseg
``DIR/vis_data/vis_image/test_<image file name>_0.png`` (as mmseg's tools/test.py).
The config, the checkpoint and the dataset's files are checked first; a missing one is named.
A checkpoint that leaves any of the built model's weights unloaded (e.g. a backbone-only or
another model's file, which evaluated to mAP 0.000 with exit 0) is an error naming the modules it
misses, before the evaluation; ``--allow-missing-weights`` evaluates anyway. A URL checkpoint is
downloaded once into a cache keyed by the whole URL (``dinat_backbone.checkpoint.download``).
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
import _outputs  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Test (and evaluate) a model with a DiNAT backbone")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", help="checkpoint file or http(s) URL (downloaded once into a cache keyed by the "
                        "whole URL)")
    parser.add_argument("--work-dir", help="the directory to save the file containing evaluation metrics")
    parser.add_argument("--out", type=str,
                        help="mmdet: dump predictions to a pickle file; mmseg: folder for prediction PNGs")
    parser.add_argument("--show", action="store_true", help="show prediction results")
    parser.add_argument("--show-dir", help="directory where painted images will be saved (mmdet: under "
                        "WORK_DIR/TIMESTAMP/ unless absolute, as mmdet's tools/test.py; the folder is printed)")
    parser.add_argument("--wait-time", type=float, default=2, help="the interval of show (s)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override settings in the config, xxx=yyy format")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--allow-missing-weights", action="store_true",
                        help="evaluate even when the checkpoint leaves some of the model's weights unloaded (they "
                             "keep their random init); without it that is an error naming them")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def trigger_visualization_hook(cfg, args, scope):
    """What mmdet's / mmseg's own tools/test.py do: mmdet gives the hook ``test_out_dir`` (one file
    per image, named as the source image), mmseg the visualizer's ``save_dir`` (and, here, interval 1,
    so that every test image is painted, not every 50th)."""
    default_hooks = cfg.default_hooks
    if "visualization" not in default_hooks:
        raise SystemExit("tools/test.py: --show / --show-dir need a visualization hook in the config's "
                         "default_hooks (mmdet's DetVisualizationHook / mmseg's SegVisualizationHook)")
    hook = default_hooks["visualization"]
    hook["draw"] = True
    if args.show:
        hook["show"] = True
        hook["wait_time"] = args.wait_time
    if args.show_dir:
        if scope == "mmdet":
            hook["test_out_dir"] = args.show_dir
        else:
            cfg.visualizer["save_dir"] = args.show_dir
            hook["interval"] = 1
    return cfg


def painted_dir(runner, args, scope):
    """The folder ``--show-dir`` images land in. For mmdet the hook's ``test_out_dir`` is made
    absolute here (``WORK_DIR/TIMESTAMP/DIR``, mmdet's layout): mmdet 3.3's hook joins
    work_dir / timestamp onto it again at every test iteration, which nests a relative path."""
    if scope == "mmseg":
        return osp.join(args.show_dir, "vis_data", "vis_image")
    from mmdet.engine.hooks import DetVisualizationHook

    folder = osp.abspath(osp.join(runner.work_dir, runner.timestamp, args.show_dir))
    for hook in runner.hooks:
        if isinstance(hook, DetVisualizationHook):
            hook.test_out_dir = folder
    return folder


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


def check_checkpoint_covers_model(model, path: str, shown: str, allow_missing: bool = False) -> None:
    """Exit before the evaluation when the checkpoint leaves model weights unloaded: mmengine's
    ``load_from`` only logs them, and the model is then evaluated with random weights."""
    from dinat_backbone.checkpoint import load_checkpoint_file
    from dinat_backbone.checkpoint.load import summarize_by_module, weights_left_unloaded

    state = load_checkpoint_file(path)
    missing, mismatched = weights_left_unloaded(model, state)
    if not missing and not mismatched:
        return
    own = [k for k in model.state_dict()]
    what = []
    if missing:
        what.append(f"{len(missing)} of the model's {len(own)} weights are not in it: "
                    f"{summarize_by_module(missing, own)}")
    if mismatched:
        what.append(f"{len(mismatched)} have another shape: {', '.join(mismatched[:5])}"
                    f"{' ...' if len(mismatched) > 5 else ''}")
    hint = ""
    if any(k.startswith(("patch_embed.", "levels.", "layers.", "encoder.", "dinat.")) for k in state):
        hint = (" It looks like a backbone-only file (e.g. ImageNet weights): those initialise training "
                "(init_cfg=dict(type='Pretrained', ...)); testing needs the trained model's checkpoint.")
    message = (f"tools/test.py: the checkpoint {shown} does not fit the model built from the config: "
               f"{'; '.join(what)}. Those weights would be evaluated as initialised (random).{hint}")
    if not allow_missing:
        raise SystemExit(message + " Pass the checkpoint trained with this config, or --allow-missing-weights "
                                   "to evaluate anyway.")
    warnings.warn(message + " (--allow-missing-weights: evaluating anyway)")


def build_cfg(args):
    cfg, scope = _common.load_config(args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args, scope)
    if args.tta:
        (_det_tta if scope == "mmdet" else _seg_tta)(cfg)
    if args.out is not None and scope == "mmseg":
        cfg.test_evaluator["output_dir"] = args.out
        cfg.test_evaluator["keep_results"] = True
    _common.adapt_to_machine(cfg, args.launcher)
    return cfg, scope


def main(argv=None):
    args = parse_args(argv)
    # paths first: a missing file is one line, not a traceback after the model is built
    _common.check_file(args.config, "config", "tools/test.py")
    _common.check_file(args.checkpoint, "checkpoint", "tools/test.py")
    if args.out is not None:  # the predictions' file / folder must not replace what the run reads
        for what, source in (("CHECKPOINT", args.checkpoint), ("CONFIG", args.config)):
            if "://" not in source and _outputs.same_file(args.out, source):
                raise SystemExit(f"tools/test.py: --out {args.out} is the {what} ({source}): give another path")
    cfg, scope = build_cfg(args)
    _common.check_data_paths(cfg, ("test",), "tools/test.py")
    if args.out is not None and scope == "mmdet" and not args.out.endswith((".pkl", ".pickle")):
        raise SystemExit(f"tools/test.py: --out {args.out}: mmdet configs dump predictions to a .pkl file")
    from dinat_backbone.checkpoint.download import local_checkpoint

    # after the cheap checks (a download takes a while); the cache is keyed by the whole URL and holds
    # only complete files (mmengine's own download caches by file name)
    cfg.load_from = local_checkpoint(args.checkpoint)
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    check_checkpoint_covers_model(runner.model, cfg.load_from, args.checkpoint, args.allow_missing_weights)
    if args.out is not None and scope == "mmdet":
        from mmdet.evaluation import DumpDetResults

        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    folder = painted_dir(runner, args, scope) if args.show_dir else None
    if folder:
        print(f"[test] painted predictions will be written to {folder}", flush=True)
    metrics = runner.test()
    if folder:
        count = len(os.listdir(folder)) if osp.isdir(folder) else 0
        print(f"[test] painted predictions: {count} images in {folder}", flush=True)
    return metrics


if __name__ == "__main__":
    main()
