"""End-to-end runs of the real mmdet / mmseg stack on the embedded toy data (CPU):

* toy Mask R-CNN: a few dozen iterations through tools/train.py, loss goes down, a checkpoint is
  written, ``--resume`` continues it on current torch (weights_only loading) with the right
  iteration count and optimizer / scheduler state, tools/test.py evaluates with the real
  CocoMetric;
* toy UPerNet: the same with ``--resume CKPT`` and the real IoUMetric;
* a 2-process CPU DDP (gloo) run through tools/dist_train.sh;
* ``init_cfg=dict(type='Pretrained')`` inside a built detector, from every checkpoint layout.

No mocks and no skips: without the mm stack these tests error.
"""
import json
import os
import socket
import subprocess
import sys
import time
from collections import OrderedDict

import pytest
import torch

import mmdet  # noqa: F401  (a missing mm stack is an error, not a skip)
import mmseg  # noqa: F401
from mmengine.config import Config
from mmengine.registry import init_default_scope

from conftest import ROOT, TOOLS, load_tool

make_toy_data = load_tool("make_toy_data")
mm_train_tool = load_tool("train")  # loaded by path: tools/test.py would clash with the stdlib's ``test``
mm_test_tool = load_tool("test")

DET_CFG = os.path.join(ROOT, "configs", "toy", "mask-rcnn_dinat-toy_fpn_toy-coco.py")
SEG_CFG = os.path.join(ROOT, "configs", "toy", "upernet_dinat-toy_toy-ade.py")


@pytest.fixture(scope="module", autouse=True)
def toy_data():
    return make_toy_data.ensure(quiet=True)


_RUN = iter(range(10 ** 6))


def _opts(iters, ckpt_interval, extra=(), log=5):
    # no validation inside training (mmengine would run it at the last iteration): tools/test.py
    # evaluates the checkpoint afterwards
    return ["--cfg-options", f"train_cfg.max_iters={iters}", "val_cfg=None", "val_dataloader=None",
            "val_evaluator=None",
            f"default_hooks.checkpoint.interval={ckpt_interval}", f"default_hooks.logger.interval={log}",
            f"log_processor.window_size={log}", "param_scheduler.0.end=5",
            # one visualizer per run: several runners in one process would otherwise share the
            # first one's (and its scalars.json)
            f"visualizer.name=vis_{os.getpid()}_{next(_RUN)}", *extra]


def _scalars(work_dir):
    """All records of the newest run's vis_data/scalars.json in ``work_dir``."""
    runs = sorted(d for d in os.listdir(work_dir) if os.path.isdir(os.path.join(work_dir, d)) and d[:1].isdigit())
    path = os.path.join(work_dir, runs[-1], "vis_data", "scalars.json")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _optimizer_steps(ckpt):
    steps = {int(v["step"]) for v in ckpt["optimizer"]["state"].values() if "step" in v}
    return steps


def _assert_weights_only_loadable(path):
    """The checkpoint loads with torch's default weights_only=True, thanks to exactly the globals
    dinat_backbone.mm.setup_training allow-lists (and every global it needs is in that list)."""
    import dinat_backbone.mm as mm

    mm.setup_training()  # what tools/train.py and tools/test.py do; the run may have been another process
    ckpt = torch.load(path, map_location="cpu")  # default weights_only=True on torch >= 2.6
    needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    allowed = set()
    for entry in mm.mm_safe_globals():
        if isinstance(entry, tuple):
            allowed.add(entry[1])
        else:
            allowed.add(f"{entry.__module__}.{entry.__qualname__}")
    assert needed <= allowed, needed - allowed
    return ckpt


def test_toy_detection_train_resume_test(tmp_path):
    work = str(tmp_path / "det")
    t0 = time.time()
    mm_train_tool.main([DET_CFG, "--work-dir", work, *_opts(16, 16, log=4)])
    t_train = time.time() - t0
    ckpt_path = os.path.join(work, "iter_16.pth")
    assert os.path.exists(ckpt_path)
    losses = [r["loss"] for r in _scalars(work) if "loss" in r]
    assert len(losses) == 4
    assert losses[-1] < 0.9 * losses[0], losses

    ckpt30 = _assert_weights_only_loadable(ckpt_path)
    assert ckpt30["meta"]["iter"] == 16
    assert _optimizer_steps(ckpt30) == {16}

    # --resume (auto: latest checkpoint of the work dir) and continue to 24 iterations
    mm_train_tool.main([DET_CFG, "--work-dir", work, "--resume", *_opts(24, 8, log=4)])
    ckpt40 = _assert_weights_only_loadable(os.path.join(work, "iter_24.pth"))
    assert ckpt40["meta"]["iter"] == 24
    # AdamW's step counters went on from 16 (a fresh optimizer would be at 8)
    assert _optimizer_steps(ckpt40) == {24}
    warmup, steps = ckpt40["param_schedulers"]  # LinearLR (ended at iteration 5), MultiStepLR
    assert warmup["last_step"] == 4 and steps["last_step"] == 24, (warmup, steps)
    resumed_iters = [r["iter"] for r in _scalars(work) if "loss" in r]
    assert resumed_iters == [20, 24], resumed_iters
    # weights moved on from the resumed ones (training really continued)
    key = "backbone.patch_embed.proj.0.weight"
    assert not torch.equal(ckpt30["state_dict"][key], ckpt40["state_dict"][key])

    metrics = mm_test_tool.main([DET_CFG, os.path.join(work, "iter_24.pth"), "--work-dir", str(tmp_path / "det_test")])
    for k in ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50"):
        assert k in metrics and 0.0 <= metrics[k] <= 1.0, metrics
    print(f"toy det: 16 iters in {t_train:.0f} s, losses {losses}, metrics {metrics}")


def test_toy_segmentation_train_resume_test(tmp_path):
    work = str(tmp_path / "seg")
    mm_train_tool.main([SEG_CFG, "--work-dir", work, *_opts(20, 20, ["optim_wrapper.optimizer.lr=0.001"])])
    ckpt_path = os.path.join(work, "iter_20.pth")
    assert os.path.exists(ckpt_path)
    losses = [r["loss"] for r in _scalars(work) if "loss" in r]
    assert losses[-1] < 0.9 * losses[0], losses
    ckpt30 = _assert_weights_only_loadable(ckpt_path)

    # --resume with an explicit checkpoint
    mm_train_tool.main([SEG_CFG, "--work-dir", work, "--resume", ckpt_path,
                        *_opts(26, 6, ["optim_wrapper.optimizer.lr=0.001"])])
    ckpt36 = _assert_weights_only_loadable(os.path.join(work, "iter_26.pth"))
    assert ckpt36["meta"]["iter"] == 26
    assert _optimizer_steps(ckpt30) == {20} and _optimizer_steps(ckpt36) == {26}

    metrics = mm_test_tool.main([SEG_CFG, os.path.join(work, "iter_26.pth"), "--work-dir", str(tmp_path / "seg_test")])
    assert {"aAcc", "mIoU", "mAcc"} <= set(metrics) and 0.0 <= metrics["mIoU"] <= 100.0, metrics


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_cpu_ddp_with_dist_train_sh(tmp_path):
    work = tmp_path / "ddp"
    env = dict(os.environ, PORT=str(_free_port()), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    cmd = ["bash", os.path.join(TOOLS, "dist_train.sh"), SEG_CFG, "2", "--work-dir", str(work),
           *_opts(4, 4)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert (work / "iter_4.pth").exists()
    logs = list(work.glob("*/*.log"))
    text = logs[0].read_text()
    assert "Distributed training: True" in text and "GPU number: 2" in text, text[:3000]
    assert "CPUDistributedDataParallel" in text or "world_size: 2" in text or "Distributed launcher: pytorch" in text
    ckpt = _assert_weights_only_loadable(str(work / "iter_4.pth"))
    assert ckpt["meta"]["iter"] == 4


# ----------------------------------------------------------------------------------------------
# init_cfg Pretrained inside a built detector, from every supported checkpoint layout
# ----------------------------------------------------------------------------------------------
def _to_hf(native, prefix=""):
    """Native DiNAT keys -> HF transformers layout (DinatBackbone; ``prefix='dinat.'`` for
    DinatForImageClassification). The inverse of the documented mapping."""
    out = OrderedDict()
    for k, v in native.items():
        if k.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + k[len("patch_embed.proj."):]] = v
        elif k.startswith("patch_embed.norm."):
            out["embeddings.norm." + k[len("patch_embed.norm."):]] = v
        elif k.startswith("norm") and k[4].isdigit():
            i = int(k[4])
            out[f"hidden_states_norms.stage{i + 1}." + k.split(".", 1)[1]] = v
        elif ".downsample." in k:
            out["encoder." + k] = v
        elif ".blocks." in k:
            _, i, _, j, rest = k.split(".", 4)  # levels.i.blocks.j.<rest>
            base = f"encoder.levels.{i}.layers.{j}."
            if rest.startswith("attn.qkv."):
                q, kk, vv = v.chunk(3, dim=0)
                kind = rest.split(".")[-1]
                out[base + "attention.self.query." + kind] = q
                out[base + "attention.self.key." + kind] = kk
                out[base + "attention.self.value." + kind] = vv
            else:
                m = {"attn.rpb": "attention.self.rpb", "norm1": "layernorm_before", "norm2": "layernorm_after"}
                name = rest
                for a, b in (("attn.proj.", "attention.output.dense."), ("norm1.", "layernorm_before."),
                             ("norm2.", "layernorm_after."), ("mlp.fc1.", "intermediate.dense."),
                             ("mlp.fc2.", "output.dense.")):
                    if rest.startswith(a):
                        name = b + rest[len(a):]
                        break
                else:
                    name = m.get(rest, rest)
                out[base + name] = v
        else:
            raise KeyError(k)
    return OrderedDict((prefix + k, v) for k, v in out.items())


def _source_backbone(cfg_backbone):
    from dinat_backbone import DiNAT

    kwargs = {k: v for k, v in cfg_backbone.items() if k not in ("type", "init_cfg")}
    torch.manual_seed(123)
    src = DiNAT(**kwargs)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # norms etc. differ from a fresh init too
    return src.state_dict()


def _layouts(native):
    body = OrderedDict((k, v) for k, v in native.items() if not (k.startswith("norm") and k[4].isdigit()))
    c = native["norm3.weight"].numel()
    imagenet = OrderedDict(body)
    imagenet["norm.weight"], imagenet["norm.bias"] = torch.ones(c), torch.zeros(c)
    imagenet["head.weight"], imagenet["head.bias"] = torch.randn(1000, c), torch.zeros(1000)
    detector = {"state_dict": OrderedDict([(f"backbone.{k}", v) for k, v in native.items()]
                                          + [("neck.lateral_convs.0.conv.weight", torch.zeros(1))]),
                "meta": {"mmdet_version": "2.28.2", "CLASSES": ["a", "b"]}}
    mmengine_ddp = {"state_dict": OrderedDict((f"module.backbone.{k}", v) for k, v in native.items()),
                    "meta": {"epoch": 36}}
    hf_backbone = _to_hf(native)
    hf_cls = _to_hf(body, prefix="dinat.")
    hf_cls["dinat.layernorm.weight"], hf_cls["dinat.layernorm.bias"] = torch.ones(c), torch.zeros(c)
    hf_cls["classifier.weight"], hf_cls["classifier.bias"] = torch.randn(1000, c), torch.zeros(1000)
    return {
        "imagenet_pth": (imagenet, set(body)),
        "mmdet_detector": (detector, set(native)),
        "mmengine_module_prefix": (mmengine_ddp, set(native)),
        "hf_dinat_backbone": (hf_backbone, set(native)),
        "hf_dinat_for_classification": (hf_cls, set(body)),
    }


@pytest.mark.parametrize("layout", ["imagenet_pth", "mmdet_detector", "mmengine_module_prefix",
                                    "hf_dinat_backbone", "hf_dinat_for_classification"])
def test_pretrained_init_cfg_in_built_detector(tmp_path, layout):
    cfg = Config.fromfile(DET_CFG)
    native = _source_backbone(cfg.model.backbone)
    obj, expected_keys = _layouts(native)[layout]
    path = str(tmp_path / f"{layout}.pth")
    torch.save(obj, path)

    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=path)
    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    detector = MODELS.build(cfg.model)
    before = {k: v.clone() for k, v in detector.backbone.state_dict().items()}
    detector.init_weights()  # what the runner calls
    got = detector.backbone.state_dict()
    for k in expected_keys:
        assert torch.equal(got[k], native[k]), k
    assert detector.backbone.is_init
    # keys the layout does not carry (output norms of classification checkpoints) keep an init
    for k in set(native) - expected_keys:
        assert k.startswith("norm")
    # the neck / heads are not touched by the backbone checkpoint
    assert any(not torch.equal(before[k], got[k]) for k in expected_keys)


def test_pretrained_mismatch_is_an_error_naming_the_key(tmp_path):
    cfg = Config.fromfile(DET_CFG)
    native = _source_backbone(cfg.model.backbone)
    native["levels.0.blocks.0.mlp.fc1.weight"] = torch.zeros(7, 7)
    path = str(tmp_path / "bad.pth")
    torch.save(native, path)
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=path)
    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    detector = MODELS.build(cfg.model)
    with pytest.raises(ValueError, match="levels.0.blocks.0.mlp.fc1.weight"):
        detector.init_weights()
