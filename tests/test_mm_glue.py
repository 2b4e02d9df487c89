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

    import dinat_backbone.mm
    from mmengine.logging.history_buffer import HistoryBuffer

    dinat_backbone.mm.setup_training()  # adds the allow-list

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


# ----------------------------------------------------------------------------------------------
# DiNAT_s, argument errors, backbone / neck channels
# ----------------------------------------------------------------------------------------------
def test_dinat_s_registered_and_built_like_dinat(tmp_path):
    import dinat_backbone
    import dinat_backbone.mm as mm
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    for reg in (DET, SEG):
        assert reg.get("DiNAT_s") is mm.DiNAT_s
    assert issubclass(mm.DiNAT_s, dinat_backbone.DiNAT_s)
    src = dinat_backbone.DiNAT_s(arch="tiny", depths=(1, 1, 1, 1))
    path = str(tmp_path / "w.pth")
    torch.save({"state_dict": {"backbone." + k: v for k, v in src.state_dict().items()}}, path)
    init_default_scope("mmseg")
    m = SEG.build(dict(type="DiNAT_s", arch="tiny", depths=(1, 1, 1, 1), dilations="ade20k-512", frozen_stages=1,
                       out_indices=(1, 3), init_cfg=dict(type="Pretrained", checkpoint=path)))
    m.init_weights()
    assert torch.equal(m.patch_embed.proj.weight, src.patch_embed.proj.weight)
    m.train()
    assert not any(p.requires_grad for p in m.layers[0].parameters())
    assert [tuple(o.shape) for o in m(torch.randn(1, 3, 64, 64))] == [(1, 192, 8, 8), (1, 768, 2, 2)]


def test_unknown_argument_to_mm_backbones_names_the_class():
    import dinat_backbone.mm  # noqa: F401  (registers the backbones)

    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    for name in ("DiNAT", "NAT", "DiNAT_s"):
        with pytest.raises(TypeError, match=rf"^{name}: unknown argument\(s\) 'window_size'.*pretrained"):
            MODELS.build(dict(type=name, window_size=7))
    with pytest.raises(TypeError, match=r"'drop_path' \(did you mean 'drop_path_rate'\?\)"):
        MODELS.build(dict(type="DiNAT", arch="mini", drop_path=0.2))


def _det_cfg(backbone, in_channels):
    return dict(type="RetinaNet", data_preprocessor=dict(type="DetDataPreprocessor"), backbone=backbone,
                neck=dict(type="FPN", in_channels=in_channels, out_channels=32, num_outs=5),
                bbox_head=dict(type="RetinaHead", num_classes=3, in_channels=32, feat_channels=32,
                               anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3,
                                                     ratios=[1.0], strides=[8, 16, 32, 64, 128]),
                               bbox_coder=dict(type="DeltaXYWHBBoxCoder"),
                               loss_cls=dict(type="FocalLoss", use_sigmoid=True), loss_bbox=dict(type="L1Loss")))


def test_neck_channel_mismatch_names_what_the_backbone_emits():
    from dinat_backbone.mm import check_neck_channels

    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    with torch.device("meta"):
        ok = MODELS.build(_det_cfg(dict(type="DiNAT", arch="mini"), [64, 128, 256, 512]))
        wrong = MODELS.build(_det_cfg(dict(type="DiNAT", arch="mini"), [96, 192, 384, 768]))
        fewer = MODELS.build(_det_cfg(dict(type="DiNAT_s", arch="tiny", out_indices=(1, 2, 3)), [96, 192, 384, 768]))
    check_neck_channels(ok)
    with pytest.raises(ValueError) as info:
        check_neck_channels(wrong)
    msg = str(info.value)
    assert "emits [64, 128, 256, 512]" in msg and "FPN has in_channels=[96, 192, 384, 768]" in msg, msg
    assert "neck.in_channels=[64, 128, 256, 512]" in msg, msg
    with pytest.raises(ValueError, match=r"DiNAT_s\(arch='tiny', embed_dim=96\) emits \[192, 384, 768\]"):
        check_neck_channels(fewer)


def test_segmentor_head_channel_mismatch_is_named():
    from dinat_backbone.mm import check_neck_channels

    init_default_scope("mmseg")
    from mmseg.registry import MODELS

    def seg(aux_in, aux_index):
        return dict(type="EncoderDecoder", data_preprocessor=dict(type="SegDataPreProcessor"),
                    backbone=dict(type="DiNAT", arch="mini"),
                    decode_head=dict(type="UPerHead", in_channels=[64, 128, 256, 512], in_index=[0, 1, 2, 3],
                                     channels=16, num_classes=3),
                    auxiliary_head=dict(type="FCNHead", in_channels=aux_in, in_index=aux_index, channels=8,
                                        num_classes=3))

    with torch.device("meta"):
        check_neck_channels(MODELS.build(seg(256, 2)))
        wrong = MODELS.build(seg(384, 2))
    with pytest.raises(ValueError, match=r"auxiliary_head FCNHead reads in_index=2 \(256 channels\) but has "
                                         r"in_channels=384"):
        check_neck_channels(wrong)


def test_channel_check_hook_fails_the_run_before_training(tmp_path):
    """tools/train.py and tools/test.py add DiNATChannelCheckHook; the runner calls it before the
    first iteration, so a wrong neck fails at once with the channels instead of inside FPN."""
    import os

    from mmengine.runner import Runner

    from conftest import ROOT, load_tool

    train = load_tool("train")
    config = os.path.join(ROOT, "configs", "toy", "mask-rcnn_dinat-toy_fpn_toy-coco.py")
    args = train.parse_args([config, "--work-dir", str(tmp_path), "--cfg-options",
                             "model.neck.in_channels=[96,192,384,768]"])
    cfg = train.build_cfg(args)
    assert dict(type="DiNATChannelCheckHook") in cfg.custom_hooks
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=r"emits \[64, 128, 256, 512\] channels.*neck\.in_channels=\[64, 128, 256, "):
        runner.call_hook("before_run")


def test_layer_decay_constructor_understands_dinat_s_layers():
    import dinat_backbone.mm  # noqa: F401  (registers DiNAT_s and the constructor)
    from mmengine.optim import build_optim_wrapper

    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    model = MODELS.build(_det_cfg(dict(type="DiNAT_s", arch="tiny", depths=(1, 2, 1, 1)), [96, 192, 384, 768]))
    rate, lr = 0.5, 1e-3
    ow = build_optim_wrapper(model, dict(
        type="OptimWrapper", constructor="DiNATLayerDecayOptimizerConstructor",
        optimizer=dict(type="AdamW", lr=lr, weight_decay=0.05), paramwise_cfg=dict(decay_rate=rate)))
    by_name = {n: g for g in ow.optimizer.param_groups for n in g["param_names"]}
    L = 5  # blocks
    assert by_name["backbone.patch_embed.proj.weight"]["lr"] == pytest.approx(lr * rate ** (L + 1))
    assert by_name["backbone.layers.1.blocks.1.attn.qkv.weight"]["lr"] == pytest.approx(lr * rate ** (L + 1 - 3))
    # layers.1.downsample feeds stage 3: the id of its first block
    assert by_name["backbone.layers.1.downsample.reduction.weight"]["lr"] == pytest.approx(lr * rate ** (L + 1 - 4))
    assert by_name["backbone.norm3.weight"]["lr"] == pytest.approx(lr)
