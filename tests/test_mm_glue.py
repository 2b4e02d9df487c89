"""dinat_backbone.mm: registration, init_cfg handling, the layer-wise LR decay constructor,
import isolation of the core. Real mmdet / mmseg / mmengine, no mocks, no skips."""
import subprocess
import sys

import pytest
import torch

import mmdet  # noqa: F401  (a missing mm stack is an error, not a skip)
import mmseg  # noqa: F401
from mmengine.registry import init_default_scope


def test_core_import_never_imports_mm_packages():
    code = ("import sys, dinat_backbone, dinat_backbone.dinat, dinat_backbone.checkpoint, dinat_backbone.ops\n"
            "m = DiNAT = dinat_backbone.DiNAT(arch='mini')\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('mmdet', 'mmseg', 'mmcv', 'mmengine'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_in_mmdet_and_mmseg():
    import dinat_backbone.mm as mm
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    assert mm.REGISTERED_IN == ["mmdet", "mmseg"]
    for reg in (DET, SEG):
        assert reg.get("DiNAT") is mm.DiNAT and reg.get("NAT") is mm.NAT
    import dinat_backbone

    assert issubclass(mm.DiNAT, dinat_backbone.DiNAT) and issubclass(mm.NAT, dinat_backbone.NAT)
    init_default_scope("mmseg")
    m = SEG.build(dict(type="NAT", arch="mini", out_indices=(1, 3)))
    outs = m(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 8, 8), (1, 512, 2, 2)]
    # same keys as the core model
    assert set(m.state_dict()) == set(dinat_backbone.NAT(arch="mini", out_indices=(1, 3)).state_dict())


def test_config_surface_frozen_stages_with_cp_dilations():
    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    m = MODELS.build(dict(type="DiNAT", arch="mini", dilations="coco", frozen_stages=1, with_cp=True,
                          drop_path_rate=0.3))
    m.train()
    assert not any(p.requires_grad for p in m.patch_embed.parameters())
    assert not any(p.requires_grad for p in m.levels[0].parameters())
    assert all(p.requires_grad for p in m.levels[1].parameters())
    assert m.dilations[0] == [1, 28, 1]
    with pytest.raises(ValueError):
        MODELS.build(dict(type="DiNAT", arch="mini", dilations=[[1, 2], [1], [1], [1]]))


def test_mmseg_legacy_pretrained_argument_and_other_initialisers(tmp_path):
    import dinat_backbone
    import dinat_backbone.mm as mm

    src = dinat_backbone.DiNAT(arch="mini")
    with torch.no_grad():
        src.patch_embed.proj[0].weight.fill_(0.5)
    path = str(tmp_path / "w.pth")
    torch.save(src.state_dict(), path)
    init_default_scope("mmseg")
    from mmseg.registry import MODELS

    from mmengine.config import ConfigDict

    seg = MODELS.build(ConfigDict(
        type="EncoderDecoder", pretrained=path,
        backbone=dict(type="DiNAT", arch="mini"),
        decode_head=dict(type="FCNHead", in_channels=512, in_index=3, channels=16, num_classes=3)))
    seg.init_weights()
    assert torch.equal(seg.backbone.patch_embed.proj[0].weight, src.patch_embed.proj[0].weight)
    # a non-Pretrained mmengine initialiser next to Pretrained: applied, then the checkpoint wins
    b = mm.DiNAT(arch="mini", init_cfg=[dict(type="Constant", layer="Linear", val=0.25, bias=0.0),
                                        dict(type="Pretrained", checkpoint=path)])
    b.init_weights()
    assert torch.equal(b.patch_embed.proj[0].weight, src.patch_embed.proj[0].weight)
    b2 = mm.DiNAT(arch="mini", init_cfg=dict(type="Constant", layer="Linear", val=0.25, bias=0.0))
    b2.init_weights()
    assert torch.all(b2.levels[0].blocks[0].mlp.fc1.weight == 0.25)
    with pytest.raises(ValueError):
        mm.DiNAT(arch="mini", pretrained=path, init_cfg=dict(type="Pretrained", checkpoint=path))


def test_layer_decay_constructor_groups_and_rates():
    from mmengine.optim import build_optim_wrapper

    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    model = MODELS.build(dict(
        type="RetinaNet",
        data_preprocessor=dict(type="DetDataPreprocessor"),
        backbone=dict(type="DiNAT", arch="mini", depths=(2, 1, 2, 1), frozen_stages=0),
        neck=dict(type="FPN", in_channels=[64, 128, 256, 512], out_channels=32, num_outs=5),
        bbox_head=dict(type="RetinaHead", num_classes=3, in_channels=32, feat_channels=32,
                       anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3,
                                             ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
                       bbox_coder=dict(type="DeltaXYWHBBoxCoder"),
                       loss_cls=dict(type="FocalLoss", use_sigmoid=True), loss_bbox=dict(type="L1Loss"))))
    rate, lr, wd = 0.8, 1e-3, 0.05
    ow = build_optim_wrapper(model, dict(
        type="OptimWrapper", constructor="DiNATLayerDecayOptimizerConstructor",
        optimizer=dict(type="AdamW", lr=lr, weight_decay=wd),
        paramwise_cfg=dict(decay_rate=rate, custom_keys={"rpb": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0)})))
    by_name = {}
    for g in ow.optimizer.param_groups:
        for n in g["param_names"]:
            by_name[n] = g
    L = 6  # blocks
    assert "backbone.patch_embed.proj.0.weight" not in by_name  # frozen (frozen_stages=0): left out
    g = by_name["backbone.levels.0.blocks.0.attn.qkv.weight"]
    assert g["lr"] == pytest.approx(lr * rate ** (L + 1 - 1)) and g["weight_decay"] == pytest.approx(wd)
    g = by_name["backbone.levels.2.blocks.1.mlp.fc1.weight"]
    assert g["lr"] == pytest.approx(lr * rate ** (L + 1 - 5))
    g = by_name["backbone.levels.2.blocks.1.attn.rpb"]
    assert g["weight_decay"] == 0.0 and g["lr"] == pytest.approx(lr * rate ** (L + 1 - 5))
    g = by_name["backbone.levels.1.downsample.reduction.weight"]  # between stage 2 and 3: first block of stage 3
    assert g["lr"] == pytest.approx(lr * rate ** (L + 1 - 4))
    assert by_name["backbone.levels.0.blocks.1.norm1.weight"]["weight_decay"] == 0.0
    assert by_name["backbone.norm3.weight"]["lr"] == pytest.approx(lr)
    assert by_name["neck.lateral_convs.0.conv.weight"]["lr"] == pytest.approx(lr)
    assert by_name["bbox_head.retina_cls.weight"]["lr"] == pytest.approx(lr)
    # stage-wise
    ow = build_optim_wrapper(model, dict(
        type="OptimWrapper", constructor="DiNATLayerDecayOptimizerConstructor",
        optimizer=dict(type="AdamW", lr=lr, weight_decay=wd),
        paramwise_cfg=dict(decay_rate=rate, decay_type="stage_wise")))
    by_name = {n: g for g in ow.optimizer.param_groups for n in g["param_names"]}
    assert by_name["backbone.levels.2.blocks.1.mlp.fc1.weight"]["lr"] == pytest.approx(lr * rate ** (4 + 1 - 3))
    assert by_name["backbone.levels.2.blocks.1.mlp.fc1.bias"]["weight_decay"] == 0.0
    # a model without a DiNAT backbone is rejected
    other = MODELS.build(dict(type="ResNet", depth=18))
    with pytest.raises(ValueError, match="no DiNAT/NAT backbone"):
        build_optim_wrapper(other, dict(type="OptimWrapper", constructor="DiNATLayerDecayOptimizerConstructor",
                                        optimizer=dict(type="AdamW", lr=lr), paramwise_cfg=dict(decay_rate=rate)))


def test_weights_only_allow_list_is_narrow():
    """The stand-in for builtins.getattr serves HistoryBuffer statistics and nothing else, and
    weights_only stays on (an arbitrary object is still refused)."""
    import io
    import os
    import pickle

    import dinat_backbone.mm  # noqa: F401  (registers the allow-list)
    from mmengine.logging.history_buffer import HistoryBuffer

    class Stats:
        def __reduce__(self):
            return (getattr, (HistoryBuffer, "mean"))

    class Evil:
        def __reduce__(self):
            return (getattr, (HistoryBuffer, "update"))

    class Worse:
        def __reduce__(self):
            return (os.system, ("true",))

    buf = io.BytesIO()
    torch.save({"m": Stats(), "h": HistoryBuffer([1.0, 2.0], [1, 1])}, buf)
    buf.seek(0)
    obj = torch.load(buf)  # default weights_only=True
    assert obj["m"] is HistoryBuffer.mean and obj["h"].mean() == 1.5
    for bad in (Evil(), Worse()):
        buf = io.BytesIO()
        torch.save({"x": bad}, buf)
        buf.seek(0)
        with pytest.raises(pickle.UnpicklingError):
            torch.load(buf)
