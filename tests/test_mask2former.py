"""Mask2Former with DiNAT on the real mmdet 3.3 / mmseg 1.2 stack (CPU):

* every Mask2Former config parses, states the authors' recipe and result, builds through the real
  registries and runs ``loss`` and ``predict`` with the real heads (mmcv's PyTorch path of the
  deformable pixel decoder) on a small random batch, shrunk through the config (backbone width
  and depth, queries, layers, point samples, input size), not by swapping modules;
* the paramwise optimizer keys give the backbone 0.1x the learning rate and no weight decay on its
  rpb tables and LayerNorms;
* the toy COCO-panoptic set is in the real format (panopticapi reads it), and the toy Mask2Former
  trains on it: PQ from mmdet's CocoPanopticMetric rises far above the untrained model's.

No mocks and no skips: without the mm stack (or panopticapi) these tests error.
"""
import copy
import glob
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import mmdet  # noqa: F401  (a missing mm stack is an error, not a skip)
import mmseg  # noqa: F401
from mmengine.config import Config
from panopticapi.utils import rgb2id  # what mmdet's CocoPanopticMetric and LoadPanopticAnnotations use

from conftest import ROOT, load_tool, mm_models, seg_batch

CONFIG_DIR = os.path.join(ROOT, "configs")
M2F_CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "dinat", "mask2former_*.py")))
TOY_CONFIG = os.path.join(CONFIG_DIR, "toy", "mask2former_dinat-toy_toy-coco-panoptic.py")
IN22K = "https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth"

#: config -> (result stated in its comment (the DiNAT paper), mm scope, queries, iterations, GPUs x images)
RECIPES = {
    "mask2former_dinat-large_16xb1-lsj-100e_coco-panoptic.py": ("PQ 58.5", "mmdet", 200, 737500, (16, 1)),
    "mask2former_dinat-large_16xb1-lsj-100e_coco.py": ("AP 50.8", "mmdet", 200, 737500, (16, 1)),
    "mask2former_dinat-large_8xb2-160k_ade20k-panoptic-640x640.py": ("PQ 49.4", "mmdet", 200, 160000, (8, 2)),
    "mask2former_dinat-large_8xb2-160k_ade20k-instance-640x640.py": ("AP 35.4", "mmdet", 200, 160000, (8, 2)),
    "mask2former_dinat-large_8xb2-160k_ade20k-640x640.py": ("mIoU 58.1", "mmseg", 100, 160000, (8, 2)),
    "mask2former_dinat-large_8xb2-90k_cityscapes-instance-512x1024.py": ("AP 45.1", "mmdet", 200, 90000, (8, 2)),
    "mask2former_dinat-large_8xb2-90k_cityscapes-512x1024.py": ("mIoU 84.5", "mmseg", 100, 90000, (8, 2)),
}


def _rel(p):
    return os.path.relpath(p, CONFIG_DIR)


def _head(model_cfg):
    return model_cfg.get("panoptic_head") or model_cfg.decode_head


def test_every_task_the_frameworks_express_is_shipped():
    assert sorted(os.path.basename(p) for p in M2F_CONFIGS) == sorted(RECIPES)


@pytest.mark.parametrize("path", M2F_CONFIGS, ids=_rel)
def test_paper_recipe(path):
    name = os.path.basename(path)
    result, scope, queries, iters, (gpus, per_gpu) = RECIPES[name]
    text = open(path).read()
    assert re.search(rf"# .*{result}\b", text), f"the paper's {result} must be stated in a comment"
    cfg = Config.fromfile(path)
    assert cfg.default_scope == scope
    assert "dinat_backbone.mm" in cfg.custom_imports.imports and not cfg.custom_imports.allow_failed_imports
    # the authors' backbone (mask2former/configs/*/dinat/*.yaml), nothing of the Swin dict left
    assert cfg.model.backbone == dict(
        type="DiNAT", arch="large", kernel_size=11, dilations="mask2former-k11", drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3), init_cfg=dict(type="Pretrained", checkpoint=IN22K))
    head = _head(cfg.model)
    assert head.type == "Mask2FormerHead" and head.num_queries == queries
    assert head.in_channels == [192, 384, 768, 1536]
    # the framework's Mask2Former pieces are kept
    assert head.pixel_decoder.encoder.num_layers == 6 and head.transformer_decoder.num_layers == 9
    train_cfg = cfg.model.train_cfg if scope == "mmdet" else head.train_cfg
    assert train_cfg.num_points == 12544
    # AdamW 1e-4 / 0.05, fp32, backbone x0.1, Mask2Former's gradient clipping
    opt = cfg.optim_wrapper
    assert opt.type == "OptimWrapper" and opt.optimizer.type == "AdamW"
    assert opt.optimizer.lr == pytest.approx(1e-4) and opt.optimizer.weight_decay == pytest.approx(0.05)
    assert opt.clip_grad == dict(max_norm=0.01, norm_type=2)
    keys = opt.paramwise_cfg.custom_keys
    assert keys["backbone"] == dict(lr_mult=0.1, decay_mult=1.0) and opt.paramwise_cfg.norm_decay_mult == 0.0
    assert not any("stages" in k or "relative_position" in k or "absolute_pos" in k for k in keys), \
        "the Swin keys of the base config must be gone"
    assert keys["backbone.levels.2.blocks.17.attn.rpb"] == dict(lr_mult=0.1, decay_mult=0.0)
    # schedule and batch (16 images in all)
    assert cfg.train_cfg.max_iters == iters and cfg.train_dataloader.batch_size == per_gpu and gpus * per_gpu == 16
    if iters == 737500:
        assert cfg.param_scheduler.type == "MultiStepLR" and cfg.param_scheduler.milestones == [655556, 710184]
    else:
        sched = cfg.param_scheduler if scope == "mmdet" else cfg.param_scheduler[0]
        assert sched.type == "PolyLR" and sched.power == 0.9 and sched.end == iters
    crop = {160000: (640, 640), 90000: (512, 1024)}.get(iters, (1024, 1024))
    if scope == "mmdet":
        assert tuple(cfg.model.data_preprocessor.batch_augments[0].size) == crop
        metric = cfg.val_evaluator if isinstance(cfg.val_evaluator, dict) else cfg.val_evaluator[0]
        assert metric.type == ("CocoPanopticMetric" if "panoptic" in name else "CocoMetric")
        assert cfg.model.test_cfg.panoptic_on == ("panoptic" in name)
    else:
        assert tuple(cfg.crop_size) == crop and cfg.val_evaluator.type == "IoUMetric"


def _shrink(cfg):
    """The same modules at a CPU-test size: a 4-block DiNAT at width 32 (still kernel 11 and the
    preset's dilations, so stage 1 pads its 16x16 map for dilation 14), 10 queries, one
    pixel-decoder layer, 3 decoder layers, 256 sampled points, 64x64 inputs."""
    cfg = copy.deepcopy(cfg)
    model = cfg.model
    model.backbone.update(embed_dim=32, depths=(2, 2, 2, 1), num_heads=(1, 2, 4, 8))
    model.backbone.init_cfg = None  # no download in the tests; loading is tested in test_checkpoint*
    head = _head(model)
    head.in_channels = [32, 64, 128, 256]
    head.num_queries = 10
    head.pixel_decoder.encoder.num_layers = 1
    head.transformer_decoder.num_layers = 3
    train_cfg = model.train_cfg if cfg.default_scope == "mmdet" else head.train_cfg
    train_cfg.num_points = 256
    if cfg.default_scope == "mmdet":
        for aug in model.data_preprocessor.batch_augments:
            aug.size = (64, 64)
        model.test_cfg.max_per_image = 10
    return cfg


def _det_batch(model, head_cfg, size=64):
    from mmdet.testing import demo_mm_inputs

    panoptic = head_cfg.num_stuff_classes > 0
    packed = demo_mm_inputs(batch_size=2, image_shapes=[(3, size, size), (3, size - 8, size)], num_items=[2, 1],
                            num_classes=head_cfg.num_things_classes, with_mask=True, with_semantic=panoptic)
    if panoptic:  # stuff labels after the things', as LoadPanopticAnnotations writes them
        g = torch.Generator().manual_seed(0)
        for sample in packed["data_samples"]:
            h, w = sample.gt_sem_seg.sem_seg.shape[-2:]
            sample.gt_sem_seg.sem_seg = torch.randint(
                head_cfg.num_things_classes, head_cfg.num_things_classes + head_cfg.num_stuff_classes,
                (1, h, w), generator=g)
    return model.data_preprocessor(packed, True)


def _param_groups(model, optim_wrapper_cfg):
    """{parameter name: (lr, weight_decay)} of the optimizer mmengine builds from the config."""
    from mmengine.optim import build_optim_wrapper

    wrapper = build_optim_wrapper(model, copy.deepcopy(optim_wrapper_cfg))
    by_id = {}
    for group in wrapper.optimizer.param_groups:
        for p in group["params"]:
            by_id[id(p)] = (group["lr"], group["weight_decay"])
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


@pytest.mark.parametrize("path", M2F_CONFIGS, ids=_rel)
def test_config_builds_and_runs_loss_and_predict(path):
    torch.manual_seed(0)
    cfg = _shrink(Config.fromfile(path))
    scope = cfg.default_scope
    model = mm_models(scope).build(cfg.model)
    assert type(model.backbone).__name__ == "DiNAT"
    assert model.backbone.kernel_size == 11
    dilations = [[b.attn.dilation for b in level.blocks] for level in model.backbone.levels]
    assert dilations == [[1, 14], [1, 4], [1, 2], [1]]
    head_cfg = _head(cfg.model)

    groups = _param_groups(model, cfg.optim_wrapper)
    b, h = 1e-5, 1e-4  # backbone x0.1
    assert groups["backbone.levels.0.blocks.1.attn.rpb"] == (pytest.approx(b), 0.0)
    assert groups["backbone.levels.2.blocks.0.norm1.weight"] == (pytest.approx(b), 0.0)
    assert groups["backbone.levels.1.downsample.norm.weight"] == (pytest.approx(b), 0.0)
    assert groups["backbone.patch_embed.norm.bias"] == (pytest.approx(b), 0.0)
    assert groups["backbone.norm3.weight"] == (pytest.approx(b), 0.0)
    assert groups["backbone.levels.0.blocks.0.attn.qkv.weight"] == (pytest.approx(b), pytest.approx(0.05))
    head_name = "panoptic_head" if scope == "mmdet" else "decode_head"
    assert groups[f"{head_name}.query_feat.weight"] == (pytest.approx(h), 0.0)
    assert groups[f"{head_name}.cls_embed.weight"] == (pytest.approx(h), pytest.approx(0.05))

    model.train()
    if scope == "mmdet":
        data = _det_batch(model, head_cfg)
        losses = model.loss(data["inputs"], data["data_samples"])
    else:
        inputs, samples = seg_batch(head_cfg.num_classes)
        losses = model.loss(inputs, samples)
    assert {"loss_cls", "loss_mask", "loss_dice"} <= {k.split(".")[-1] for k in losses}
    assert any(k.startswith("d2.") or ".d2." in k for k in losses)  # deep supervision over the decoder layers
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.levels[0].blocks[1].attn.rpb.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        if scope == "mmdet":
            data = _det_batch(model, head_cfg)
            preds = model.predict(data["inputs"], data["data_samples"])
            assert len(preds) == 2
            if cfg.model.test_cfg.panoptic_on:
                seg = preds[0].pred_panoptic_seg.sem_seg
                assert seg.shape[-2:] == tuple(data["data_samples"][0].ori_shape)
            else:
                assert preds[0].pred_instances.masks.shape[0] <= 10
        else:
            inputs, samples = seg_batch(head_cfg.num_classes)
            preds = model.predict(inputs, samples)
            assert len(preds) == 2 and preds[0].pred_sem_seg.data.shape[-2:] == (64, 64)


@pytest.mark.parametrize("path", M2F_CONFIGS, ids=_rel)
def test_parameter_count_is_the_authors(path):
    """The authors' model zoo (mask2former/README.md): 220M parameters for every DiNAT-L model
    (built on the meta device: structure only)."""
    cfg = Config.fromfile(path)
    with torch.device("meta"):
        model = mm_models(cfg.default_scope).build(cfg.model)
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e6) == 220, f"{count / 1e6:.2f}M"


# ----------------------------------------------------------------------------------------------
# The toy panoptic job
# ----------------------------------------------------------------------------------------------
make_toy_data = load_tool("make_toy_data")


@pytest.fixture(scope="module")
def toy_panoptic():
    return make_toy_data.ensure(only="coco_panoptic", quiet=True)["coco_panoptic"]


def test_toy_panoptic_set_is_in_the_coco_panoptic_format(toy_panoptic):
    for split, count in make_toy_data.SPLITS_PANOPTIC.items():
        with open(os.path.join(toy_panoptic, "annotations", f"panoptic_{split}.json")) as f:
            data = json.load(f)
        cats = {c["id"]: c for c in data["categories"]}
        assert [c["name"] for c in cats.values() if c["isthing"]] == ["circle", "square", "triangle"]
        assert [c["name"] for c in cats.values() if not c["isthing"]] == ["stripes", "checker"]
        assert len(data["images"]) == len(data["annotations"]) == count
        stuff_seen = set()
        for image, ann in zip(data["images"], data["annotations"]):
            assert ann["image_id"] == image["id"]
            assert os.path.exists(os.path.join(toy_panoptic, split, image["file_name"]))
            png = np.array(Image.open(os.path.join(toy_panoptic, "annotations", f"panoptic_{split}", ann["file_name"])))
            assert png.dtype == np.uint8 and png.shape == (image["height"], image["width"], 3)
            ids = rgb2id(png)
            segments = {s["id"]: s for s in ann["segments_info"]}
            assert set(np.unique(ids)) - {0} == set(segments)
            for seg_id, seg in segments.items():
                mask = ids == seg_id
                assert seg["area"] == int(mask.sum()) and seg["category_id"] in cats
                ys, xs = np.nonzero(mask)
                assert seg["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                if not cats[seg["category_id"]]["isthing"]:
                    stuff_seen.add(seg["category_id"])
        assert stuff_seen == {c for c in cats if not cats[c]["isthing"]}


def _toy_runner(tmp_path, name, iters):
    from mmengine.runner import Runner

    cfg = Config.fromfile(TOY_CONFIG)
    cfg.work_dir = str(tmp_path / name)
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = cfg.default_hooks.checkpoint.interval = iters
    cfg.param_scheduler[1].end = iters
    cfg.param_scheduler[1].milestones = [int(iters * 0.8)]
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.log_level = "WARNING"
    cfg.visualizer.name = f"vis_{name}"
    return Runner.from_cfg(cfg)


def test_toy_mask2former_trains_and_pq_rises(tmp_path, toy_panoptic):
    """A short run of the toy config: CocoPanopticMetric (panopticapi) scores the untrained model
    near zero and the trained one far above it, for things and for stuff."""
    cfg = Config.fromfile(TOY_CONFIG)
    assert cfg.test_evaluator.type == "CocoPanopticMetric"
    torch.manual_seed(0)
    untrained = _toy_runner(tmp_path, "untrained", 1).test()
    assert set(untrained) >= {f"coco_panoptic/{m}{s}" for m in ("PQ", "SQ", "RQ") for s in ("", "_th", "_st")}
    runner = _toy_runner(tmp_path, "trained", 100)  # half the toy schedule (PQ ~60 after all 200)
    runner.train()
    trained = runner.test()
    print("untrained", untrained, "\ntrained", trained)
    assert untrained["coco_panoptic/PQ"] < 10
    assert trained["coco_panoptic/PQ"] > untrained["coco_panoptic/PQ"] + 15
    assert trained["coco_panoptic/PQ_st"] > 30 and trained["coco_panoptic/PQ_th"] > untrained["coco_panoptic/PQ_th"]


def test_run_toy_panoptic_table():
    run_toy = load_tool("run_toy")
    metrics = {f"coco_panoptic/{m}{s}": v for m, v0 in (("PQ", 50.0), ("SQ", 80.0), ("RQ", 60.0))
               for s, v in (("", v0), ("_th", v0 - 10), ("_st", v0 + 10))}
    lines = run_toy.panoptic_table(metrics)
    assert lines[1].split() == ["all", "50.0", "80.0", "60.0"]
    assert lines[2].split() == ["things", "40.0", "70.0", "50.0"]
    assert lines[3].split() == ["stuff", "60.0", "90.0", "70.0"]


@pytest.mark.parametrize("path", [p for p in M2F_CONFIGS if "coco-panoptic" in p or "ade20k-640x640" in p], ids=_rel)
def test_pixel_decoder_channel_mismatch_names_both_lists(path):
    """A Mask2Former head built for another backbone width fails in DiNATChannelCheckHook's check
    (tools/train.py / tools/test.py add it), naming what the backbone emits, instead of a
    convolution shape error in the pixel decoder at the first iteration."""
    from dinat_backbone.mm import check_neck_channels

    cfg = _shrink(Config.fromfile(path))
    models = mm_models(cfg.default_scope)
    check_neck_channels(models.build(cfg.model))  # matching: passes
    _head(cfg.model).in_channels = [192, 384, 768, 1536]  # the DiNAT-L widths, backbone shrunk to 32
    with pytest.raises(ValueError, match=r"emits \[32, 64, 128, 256\].*pixel decoder.*\[192, 384, 768, 1536\]"):
        check_neck_channels(models.build(cfg.model))


def test_config_init_cfg_loads_7x7_imagenet_and_detectron2_files(tmp_path):
    """The config's Pretrained init_cfg inside the built Mask2Former (init_weights of the whole
    detector): an ImageNet-layout file with 7x7 rpb tables gives the kernel-11 backbone their bicubic
    resize; one of the authors' detectron2 Mask2Former files gives its backbone exactly."""
    from dinat_backbone import DiNAT
    from dinat_backbone.checkpoint import resize_rpb

    from test_checkpoint import original_classification_state_dict
    from test_checkpoint_mask2former import detectron2_mask2former_checkpoint

    cfg = _shrink(Config.fromfile(M2F_CONFIGS[0]))
    bb = cfg.model.backbone
    small = dict(arch="large", embed_dim=bb.embed_dim, depths=bb.depths, num_heads=bb.num_heads, drop_path_rate=0.0)
    torch.manual_seed(0)
    imagenet = original_classification_state_dict(DiNAT(kernel_size=7, dilations="in1k-224", **small))
    torch.save(imagenet, tmp_path / "dinat_large_in22k_224.pth")
    trained = DiNAT(kernel_size=11, dilations="mask2former-k11", **small)
    torch.save(detectron2_mask2former_checkpoint(trained), tmp_path / "mask2former_dinat_large_coco_panoptic.pth")

    models = mm_models(cfg.default_scope)
    bb.init_cfg = dict(type="Pretrained", checkpoint=str(tmp_path / "dinat_large_in22k_224.pth"))
    model = models.build(cfg.model)
    model.init_weights()
    own = model.backbone.state_dict()
    key = "levels.0.blocks.1.attn.rpb"
    assert imagenet[key].shape[-1] == 13 and own[key].shape[-1] == 21
    torch.testing.assert_close(own[key], resize_rpb(imagenet[key], 21), rtol=0, atol=0)
    assert torch.equal(own["levels.2.blocks.0.attn.qkv.weight"], imagenet["levels.2.blocks.0.attn.qkv.weight"])

    bb.init_cfg = dict(type="Pretrained", checkpoint=str(tmp_path / "mask2former_dinat_large_coco_panoptic.pth"))
    model = models.build(cfg.model)
    model.init_weights()
    for k, v in trained.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
