"""Every shipped config parses, builds through the real mmdet / mmseg registries and runs one
``loss`` and one ``predict`` forward on a small random batch with the real heads.

No mocks and no skips: without mmdet / mmseg / mmcv these tests error (the CI must fail).
Pretrained weights are not loaded here (no downloads; see test_mm_train.py for init_cfg loading):
the models keep their random init.
"""
import glob
import os
import re

import pytest
import torch

import mmdet  # noqa: F401  (a missing mm stack is an error, not a skip)
import mmseg  # noqa: F401
from mmengine.config import Config

from conftest import ROOT, mm_models, seg_batch
from dinat_backbone import MODEL_FAMILIES

CONFIG_DIR = os.path.join(ROOT, "configs")
# Mask2Former configs have their own recipe checks and shrunk build (tests/test_mask2former.py)
PAPER_CONFIGS = sorted(p for family in ("dinat", "nat", "dinat_s")
                       for p in glob.glob(os.path.join(CONFIG_DIR, family, "*.py"))
                       if not os.path.basename(p).startswith("mask2former_"))
TOY_CONFIGS = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "toy", "*.py"))
                     if not os.path.basename(p).startswith("mask2former_"))
ALL_CONFIGS = PAPER_CONFIGS + TOY_CONFIGS


def _rel(p):
    return os.path.relpath(p, CONFIG_DIR)


def test_the_issue_config_list_is_shipped():
    names = {os.path.basename(p) for p in PAPER_CONFIGS}
    expected = set()
    for model in ("dinat", "nat"):
        for a in ("mini", "tiny", "small"):
            expected.add(f"mask-rcnn_{model}-{a}_fpn_3x_coco.py")
        for a in ("mini", "tiny", "small", "base") + (("large",) if model == "dinat" else ()):
            expected.add(f"cascade-mask-rcnn_{model}-{a}_fpn_3x_coco.py")
        for a in ("mini", "tiny", "small", "base"):
            expected.add(f"upernet_{model}-{a}_512x512_160k_ade20k.py")
    expected.add("upernet_dinat-large_640x640_160k_ade20k.py")
    # DiNAT_s: the authors' detection/DiNAT.md and segmentation/DiNAT.md tables
    expected |= {f"mask-rcnn_dinat_s-{a}_fpn_3x_coco.py" for a in ("tiny", "small")}
    expected |= {f"cascade-mask-rcnn_dinat_s-{a}_fpn_3x_coco.py" for a in ("tiny", "small", "base", "large")}
    expected |= {f"upernet_dinat_s-{a}_512x512_160k_ade20k.py" for a in ("tiny", "small", "base")}
    expected.add("upernet_dinat_s-large_640x640_160k_ade20k.py")
    assert expected <= names, sorted(expected - names)
    assert len(TOY_CONFIGS) >= 2


def _paper_recipe_checks(path, cfg):
    name = os.path.basename(path)
    text = open(path).read()
    bb = cfg.model.backbone
    family, arch = re.search(r"_(dinat_s|dinat|nat)-(mini|tiny|small|base|large)", name).groups()
    assert bb.arch == arch
    assert bb.type == {"nat": "NAT", "dinat": "DiNAT", "dinat_s": "DiNAT_s"}[family]
    swin_layout = bb.type == "DiNAT_s"
    assert cfg.custom_imports == dict(imports=["dinat_backbone.mm"], allow_failed_imports=False)
    url = bb.init_cfg.checkpoint
    assert bb.init_cfg.type == "Pretrained" and url.startswith("https://shi-labs.com/projects/")
    if bb.type == "NAT":
        assert url == f"https://shi-labs.com/projects/nat/checkpoints/CLS/nat_{arch}.pth"
    elif arch == "large":
        assert f"{family}_large_in22k" in url
    else:
        assert url == f"https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/{family}_{arch}_in1k_224.pth"
    assert re.search(r"# .*(AP|mIoU) \d+\.\d", text), "the paper's result must be stated in a comment"
    opt = cfg.optim_wrapper
    assert opt.optimizer.type == "AdamW"
    assert opt.paramwise_cfg.custom_keys == {"rpb": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0)}
    if cfg.default_scope == "mmdet":
        assert bb.get("dilations") == (None if bb.type == "NAT" else "coco")
        assert cfg.train_cfg.max_epochs == 36
        steps = [s for s in cfg.param_scheduler if s.type == "MultiStepLR"][0]
        warm = [s for s in cfg.param_scheduler if s.type == "LinearLR"][0]
        assert steps.milestones == [27, 33] and warm.end == 500 and not warm.by_epoch
        assert cfg.train_dataloader.batch_size == 2
        cascade = name.startswith("cascade")
        lr = 7.5e-5 if cascade and arch in ("base", "large") else 1e-4
        if swin_layout and arch == "large":
            lr = 5e-5  # the authors' DiNAT_s-Large config
        assert opt.optimizer.lr == pytest.approx(lr) and opt.optimizer.weight_decay == 0.05
        # fp32 for DiNAT-Large only (the authors' DiNAT_s-Large config keeps mixed precision)
        assert opt.type == ("OptimWrapper" if arch == "large" and not swin_layout else "AmpOptimWrapper")
        dpr = {"mini": 0.2, "tiny": 0.3 if cascade else 0.2, "small": 0.5 if cascade else 0.35,
               "base": 0.6, "large": 0.6}[arch]
        assert bb.drop_path_rate == pytest.approx(dpr)
        if cascade:
            for head in cfg.model.roi_head.bbox_head:
                assert head.type == "ConvFCBBoxHead" and head.num_shared_convs == 4 and head.num_shared_fcs == 1
                assert head.loss_bbox.type == "GIoULoss" and head.norm_cfg.type == "SyncBN"
        assert cfg.test_dataloader.dataset.pipeline[1].scale == (1333, 800)
    else:
        size = 640 if arch == "large" else 512
        assert cfg.crop_size == (size, size)
        assert bb.get("dilations") == (("ade20k-640" if arch == "large" else "ade20k-512")
                                       if bb.type != "NAT" else None)
        assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2
        assert opt.optimizer.lr == pytest.approx(6e-5) and opt.optimizer.weight_decay == 0.01
        warm, poly = cfg.param_scheduler
        assert warm.end == 1500 and poly.type == "PolyLR" and poly.power == 1.0 and poly.begin == 1500
        resize = [t for t in cfg.train_pipeline if t.type == "RandomResize"][0]
        assert resize.scale == (4 * size, size) and tuple(resize.ratio_range) == (0.5, 2.0)
        crop = [t for t in cfg.train_pipeline if t.type == "RandomCrop"][0]
        assert tuple(crop.crop_size) == (size, size)
        dpr = 0.3 if swin_layout else {"mini": 0.2, "tiny": 0.3, "small": 0.5, "base": 0.5, "large": 0.3}[arch]
        assert bb.drop_path_rate == pytest.approx(dpr)
        assert cfg.model.decode_head.type == "UPerHead" and cfg.model.auxiliary_head.type == "FCNHead"
    c = bb.get("embed_dim") or MODEL_FAMILIES[family].arch_settings[arch]["embed_dim"]
    chans = [c, 2 * c, 4 * c, 8 * c]
    if cfg.default_scope == "mmdet":
        assert cfg.model.neck.in_channels == chans
    else:
        assert cfg.model.decode_head.in_channels == chans and cfg.model.auxiliary_head.in_channels == 4 * c


def _cheap_sampling(model_cfg):
    """Fewer proposals / sampled RoIs than the COCO recipe (which samples 512 RoIs per image for
    each of Cascade's three 4conv1fc heads): same modules and code paths, a fraction of the CPU time."""
    train, test = model_cfg.train_cfg, model_cfg.test_cfg
    train.rpn_proposal.nms_pre = 200
    train.rpn_proposal.max_per_img = 50
    rcnn = train.rcnn if isinstance(train.rcnn, list) else [train.rcnn]
    for stage in rcnn:
        stage.sampler.num = 32
    test.rpn.nms_pre = 200
    test.rpn.max_per_img = 50
    test.rcnn.max_per_img = 20


def _det_batch(model, num_classes, size=64):
    from mmdet.testing import demo_mm_inputs

    packed = demo_mm_inputs(batch_size=2, image_shapes=(3, size, size), num_items=[2, 1],
                            num_classes=num_classes, with_mask=True)
    return model.data_preprocessor(packed, True)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=_rel)
def test_config_builds_and_runs_loss_and_predict(path):
    torch.manual_seed(0)
    cfg = Config.fromfile(path)  # imports dinat_backbone.mm through custom_imports
    if path in PAPER_CONFIGS:
        _paper_recipe_checks(path, cfg)
    scope = cfg.default_scope
    MODELS = mm_models(scope)
    if scope == "mmdet":
        _cheap_sampling(cfg.model)
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == cfg.model.backbone.type
    # init_cfg is kept for init_weights() (nothing is downloaded at build time)
    if path in PAPER_CONFIGS:
        assert model.backbone.init_cfg["checkpoint"] == cfg.model.backbone.init_cfg.checkpoint

    model.train()
    if scope == "mmdet":
        num_classes = cfg.model.roi_head.mask_head.num_classes
        data = _det_batch(model, num_classes)
        losses = model.loss(data["inputs"], data["data_samples"])
        assert {"loss_rpn_cls", "loss_mask"} <= {k.split(".")[-1] if "loss_mask" in k else k for k in losses} or \
            any("loss_mask" in k for k in losses)
    else:
        inputs, samples = seg_batch(cfg.model.decode_head.num_classes)
        losses = model.loss(inputs, samples)
        assert "decode.loss_ce" in losses and "aux.loss_ce" in losses
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)

    model.eval()
    with torch.no_grad():
        if scope == "mmdet":
            data = _det_batch(model, num_classes)
            preds = model.predict(data["inputs"], data["data_samples"])
            assert len(preds) == 2 and hasattr(preds[0], "pred_instances")
            assert preds[0].pred_instances.bboxes.shape[-1] == 4
        else:
            inputs, samples = seg_batch(cfg.model.decode_head.num_classes)
            preds = model.predict(inputs, samples)
            assert len(preds) == 2 and preds[0].pred_sem_seg.data.shape[-2:] == (64, 64)


#: Parameter counts (millions, as rounded in the authors' detection/DiNAT.md and
#: segmentation/DiNAT.md tables) of the whole detector / segmentor.
AUTHORS_PARAMS_M = {
    "mask-rcnn_dinat-mini_fpn_3x_coco.py": 40, "mask-rcnn_dinat-tiny_fpn_3x_coco.py": 48,
    "mask-rcnn_dinat-small_fpn_3x_coco.py": 70, "cascade-mask-rcnn_dinat-mini_fpn_3x_coco.py": 77,
    "cascade-mask-rcnn_dinat-tiny_fpn_3x_coco.py": 85, "cascade-mask-rcnn_dinat-small_fpn_3x_coco.py": 108,
    "cascade-mask-rcnn_dinat-base_fpn_3x_coco.py": 147, "cascade-mask-rcnn_dinat-large_fpn_3x_coco.py": 258,
    "upernet_dinat-mini_512x512_160k_ade20k.py": 50, "upernet_dinat-tiny_512x512_160k_ade20k.py": 58,
    "upernet_dinat-small_512x512_160k_ade20k.py": 82, "upernet_dinat-base_512x512_160k_ade20k.py": 123,
    "upernet_dinat-large_640x640_160k_ade20k.py": 238,
    "mask-rcnn_dinat_s-tiny_fpn_3x_coco.py": 48, "mask-rcnn_dinat_s-small_fpn_3x_coco.py": 69,
    "cascade-mask-rcnn_dinat_s-tiny_fpn_3x_coco.py": 86, "cascade-mask-rcnn_dinat_s-small_fpn_3x_coco.py": 107,
    "cascade-mask-rcnn_dinat_s-base_fpn_3x_coco.py": 145, "cascade-mask-rcnn_dinat_s-large_fpn_3x_coco.py": 253,
    "upernet_dinat_s-tiny_512x512_160k_ade20k.py": 60, "upernet_dinat_s-small_512x512_160k_ade20k.py": 81,
    "upernet_dinat_s-base_512x512_160k_ade20k.py": 121, "upernet_dinat_s-large_640x640_160k_ade20k.py": 234,
}


@pytest.mark.parametrize("name", sorted(AUTHORS_PARAMS_M))
def test_parameter_count_matches_the_authors_table(name):
    """The built model (meta device: structure only, no memory) has the authors' parameter count
    to the precision they state (1M)."""
    family = "dinat_s" if "_dinat_s-" in name else "dinat"
    cfg = Config.fromfile(os.path.join(CONFIG_DIR, family, name))
    with torch.device("meta"):
        model = mm_models(cfg.default_scope).build(cfg.model)
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e6) == AUTHORS_PARAMS_M[name], f"{name}: {count / 1e6:.2f}M"
