#!/usr/bin/env python
"""The toy jobs: small DiNAT models end to end on CPU, no downloads.

1. generates the embedded toy data if it is missing (tools/make_toy_data.py, deterministic);
2. trains a toy config from scratch with mmengine's Runner;
3. evaluates it on the toy val split with the real metric and prints the result.

    python tools/run_toy.py [--only det|seg|panoptic] [--seg] [--panoptic] [--iters N] [--work-dir DIR]

The main job (the default, ``--only det``) is the toy Mask R-CNN (mmdet CocoMetric: bbox / segm
mAP); ``--only seg`` the toy UPerNet (mmseg IoUMetric: mIoU); ``--only panoptic`` the toy Mask2Former
(mmdet CocoPanopticMetric: PQ / SQ / RQ). ``--seg`` / ``--panoptic`` add those jobs after the main
one. Only the ``[toy]`` lines are printed: pycocotools' and mmengine's console output and the
OpenMMLab libraries' UserWarnings are kept back (shown with ``--verbose``; the console output also
when a run fails).
"""
import argparse
import os.path as osp
import sys
import time

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

DET_CONFIG = osp.join(ROOT, "configs", "toy", "mask-rcnn_dinat-toy_fpn_toy-coco.py")
SEG_CONFIG = osp.join(ROOT, "configs", "toy", "upernet_dinat-toy_toy-ade.py")
PANOPTIC_CONFIG = osp.join(ROOT, "configs", "toy", "mask2former_dinat-toy_toy-coco-panoptic.py")


def _progress_hook_type():
    """A hook printing one short progress line every 20 iterations (mmengine's own log is quiet)."""
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    if "ToyProgressHook" not in HOOKS.module_dict:

        @HOOKS.register_module()
        class ToyProgressHook(Hook):
            priority = "LOW"

            def __init__(self, interval=20):
                self.interval = interval
                self.t0 = None

            def before_train(self, runner):
                self.t0 = time.time()

            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
                it, total = runner.iter + 1, runner.max_iters
                if it % self.interval == 0 or it == total:
                    el = time.time() - self.t0
                    # detached: float() of a tensor that requires grad warns on current torch
                    loss = float(outputs["loss"].detach()) if outputs and "loss" in outputs else float("nan")
                    print(f"[toy]   iter {it:4d}/{total}  loss {loss:.3f}  {el:5.0f} s elapsed, "
                          f"~{el / it * (total - it):.0f} s to go", flush=True)

    return "ToyProgressHook"


class _ToyLinesOnly:
    """A stdout stand-in that passes the ``[toy]`` lines through and keeps everything else (the ~50
    lines pycocotools prints per evaluation, dataset loading messages) for when a run fails."""

    def __init__(self, out):
        import io

        self.out, self.kept, self.partial = out, io.StringIO(), ""

    def write(self, text):
        self.kept.write(text)
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            if line.startswith("[toy]"):
                self.out.write(line + "\n")
                self.out.flush()
        return len(text)

    def flush(self):
        self.out.flush()


def config_max_iters(config):
    """The ``max_iters = N`` a toy config sets (read from its source: --help must not need mmengine)."""
    import ast

    with open(config) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and any(isinstance(t, ast.Name) and t.id == "max_iters" for t in node.targets)):
            return node.value.value
    return None


def run(config, work_dir, iters=None, quiet=True):
    """Train ``config`` (optionally for ``iters`` iterations), then test it; returns the metrics."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    import _common

    cfg = Config.fromfile(config)
    _common.import_scope(_common.scope_of(cfg))
    cfg.work_dir = work_dir
    if iters is not None:
        cfg.train_cfg.max_iters = iters
        cfg.train_cfg.val_interval = iters
        cfg.default_hooks.checkpoint.interval = iters
        for sched in cfg.param_scheduler:
            if sched.get("type") == "MultiStepLR":
                sched["end"] = iters
                sched["milestones"] = [int(iters * 0.8)]
            elif sched.get("type") == "PolyLR":
                sched["end"] = iters
    # evaluate once, after training (runner.test below), not inside the train loop (mmengine
    # validates at the last iteration whatever val_interval says)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if quiet:
        cfg.log_level = "WARNING"
        cfg.default_hooks.logger.interval = 10 ** 9
        cfg.custom_hooks = list(cfg.get("custom_hooks", [])) + [dict(type=_progress_hook_type(), interval=20)]
    _common.adapt_to_machine(cfg, "none")

    def train_and_test():
        runner = Runner.from_cfg(cfg)
        runner.train()
        return runner.test()

    if not quiet:
        return train_and_test()
    import contextlib
    import warnings

    filtered = _ToyLinesOnly(sys.stdout)
    try:
        with contextlib.redirect_stdout(filtered), warnings.catch_warnings():
            # the OpenMMLab libraries' deprecation notices (mmseg prints five per run); this package's
            # own warnings (e.g. a missing compiled kernel) still show
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(mmcv|mmdet|mmengine|mmseg)(\.|$)")
            return train_and_test()
    except BaseException:
        sys.stdout.write(filtered.kept.getvalue())
        raise


def panoptic_table(metrics: dict) -> list:
    """PQ / SQ / RQ of all classes, things and stuff from CocoPanopticMetric's results."""
    rows = [("all", ""), ("things", "_th"), ("stuff", "_st")]
    lines = [f"{'':8s}{'PQ':>7s}{'SQ':>7s}{'RQ':>7s}"]
    for name, suffix in rows:
        values = (metrics[f"coco_panoptic/{m}{suffix}"] for m in ("PQ", "SQ", "RQ"))
        lines.append(f"{name:8s}" + "".join(f"{value:7.1f}" for value in values))
    return lines


def run_panoptic(work_dir: str, iters=None, quiet: bool = True) -> list:
    """Train + evaluate the toy Mask2Former (panoptic); returns the report lines."""
    print("[toy] training toy Mask2Former (DiNAT, 6 blocks, width 32) on CPU; evaluating with "
          "CocoPanopticMetric", flush=True)
    from make_toy_data import shown_path

    t0 = time.time()
    out = osp.join(work_dir, "mask2former")
    metrics = run(PANOPTIC_CONFIG, out, iters, quiet=quiet)
    return ["", "=== toy Mask2Former (DiNAT) on toy COCO-panoptic val (24 images, 3 things + 2 stuff) ===",
            *panoptic_table(metrics),
            f"train + eval {time.time() - t0:.0f} s; checkpoint and logs in {shown_path(out)}"]


#: The jobs by their ``--only`` name, in the order ``--seg`` / ``--panoptic`` run them.
JOBS = ("det", "seg", "panoptic")


def jobs_to_run(only=None, seg=False, panoptic=False) -> list:
    """The jobs a command line asks for: ``--only`` one of them, else the main job plus the added ones."""
    if only is not None:
        if seg or panoptic:
            raise SystemExit(f"run_toy.py: --only {only} runs one job; drop --seg / --panoptic "
                             f"(or drop --only to run the main job and the added ones)")
        return [only]
    return ["det"] + (["seg"] if seg else []) + (["panoptic"] if panoptic else [])


def run_det(work_dir: str, iters=None, quiet: bool = True) -> tuple:
    """Train + evaluate the toy Mask R-CNN; returns (report lines, whether both mAPs came back)."""
    from make_toy_data import shown_path

    print("[toy] training toy Mask R-CNN (DiNAT, 6 blocks, mini width) on CPU; evaluating with CocoMetric",
          flush=True)
    t0 = time.time()
    out = osp.join(work_dir, "mask-rcnn")
    det = run(DET_CONFIG, out, iters, quiet=quiet)
    bbox = det.get("coco/bbox_mAP")
    segm = det.get("coco/segm_mAP")
    lines = [
        "",
        "=== toy Mask R-CNN (DiNAT) on toy COCO val (24 images, 3 classes) ===",
        f"bbox mAP {bbox:.3f}   mAP_50 {det.get('coco/bbox_mAP_50', float('nan')):.3f}   "
        f"mAP_75 {det.get('coco/bbox_mAP_75', float('nan')):.3f}",
        f"segm mAP {segm:.3f}   mAP_50 {det.get('coco/segm_mAP_50', float('nan')):.3f}   "
        f"mAP_75 {det.get('coco/segm_mAP_75', float('nan')):.3f}",
        f"train + eval {time.time() - t0:.0f} s; checkpoint and logs in {shown_path(out)}",
    ]
    return lines, bbox is not None and segm is not None


def run_seg(work_dir: str, iters=None, quiet: bool = True, announce: bool = False) -> list:
    """Train + evaluate the toy UPerNet; returns the report lines. ``announce``: print a start line
    (when it runs alone; after the main job its result block is announcement enough)."""
    if announce:
        print("[toy] training toy UPerNet (DiNAT, 6 blocks, mini width) on CPU; evaluating with IoUMetric",
              flush=True)
    t0 = time.time()
    seg = run(SEG_CONFIG, osp.join(work_dir, "upernet"), iters, quiet=quiet)
    return ["", "=== toy UPerNet (DiNAT) on toy ADE val (16 images, 4 classes) ===",
            f"mIoU {seg.get('mIoU', float('nan')):.2f}   aAcc {seg.get('aAcc', float('nan')):.2f}   "
            f"mAcc {seg.get('mAcc', float('nan')):.2f}",
            f"train + eval {time.time() - t0:.0f} s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=JOBS,
                   help="run this one job alone: det (toy Mask R-CNN, the main job), seg (toy UPerNet) or "
                        "panoptic (toy Mask2Former)")
    p.add_argument("--iters", type=int,
                   help=f"Mask R-CNN training iterations (default: the config's, {config_max_iters(DET_CONFIG)}; "
                        f"--seg's UPerNet always trains its config's {config_max_iters(SEG_CONFIG)}); "
                        f"with --only, the iterations of that job")
    p.add_argument("--work-dir", default=osp.join(ROOT, "work_dirs", "toy"))
    p.add_argument("--seg", action="store_true", help="also train + evaluate the toy UPerNet after the main job")
    p.add_argument("--panoptic", action="store_true",
                   help="also train + evaluate the toy Mask2Former (panoptic: PQ / SQ / RQ) after the main job")
    p.add_argument("--verbose", action="store_true",
                   help="show mmengine's training log, pycocotools' output and the OpenMMLab libraries' warnings")
    args = p.parse_args(argv)
    jobs = jobs_to_run(args.only, args.seg, args.panoptic)

    import make_toy_data

    t0 = time.time()
    make_toy_data.ensure()
    quiet = not args.verbose
    lines, ok = [], True
    for job in jobs:
        # --iters is the main job's unless --only names another one
        iters = args.iters if job == "det" or args.only else None
        if job == "det":
            det_lines, ok = run_det(args.work_dir, iters, quiet=quiet)
            lines += det_lines
        elif job == "seg":
            lines += run_seg(args.work_dir, iters, quiet=quiet, announce=args.only == "seg")
        else:
            lines += run_panoptic(args.work_dir, iters, quiet=quiet)
    lines.append(f"total {time.time() - t0:.0f} s")
    print("\n".join(lines), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
