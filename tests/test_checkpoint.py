"""Checkpoint conversion / loading: every published layout round-trips into DiNAT."""
import logging
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from dinat_backbone import DiNAT, convert_checkpoint, load_pretrained
from dinat_backbone.checkpoint import CHECKPOINT_URLS, resize_rpb

from helpers import tiny_dinat_config
from conftest import perturb_

DEPTHS = (2, 2, 2, 2)
HEADS = (1, 2, 2, 4)
DILATIONS = [[1, 4], [1, 3], [1, 2], [1, 1]]


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one thread, no kernel warning


def make_model(seed=None, **kwargs):
    cfg = dict(embed_dim=16, depths=DEPTHS, num_heads=HEADS, mlp_ratio=2.0, kernel_size=5, dilations=DILATIONS,
               layer_scale=0.5, drop_path_rate=0.0)
    cfg.update(kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    model = DiNAT(**cfg)
    if seed is not None:
        with torch.no_grad():  # off the init, so that a missed weight shows
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def assert_same_outputs(a, b, x):
    with torch.no_grad():
        for u, v in zip(a(x), b(x)):
            torch.testing.assert_close(u, v, rtol=0, atol=0)


def assert_same_state(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if not k.startswith(skip):
            assert torch.equal(sa[k], sb[k]), k


X = torch.randn(1, 3, 48, 56)


# ----------------------------------------------------------------------------------------------
# Original layouts
# ----------------------------------------------------------------------------------------------
def original_classification_state_dict(model, num_classes=10):
    """The original ImageNet model's keys: the backbone plus final ``norm`` and ``head``, no norm0..3."""
    sd = OrderedDict((k, v.clone()) for k, v in model.state_dict().items()
                     if not k.startswith(("norm0", "norm1", "norm2", "norm3")))
    c = model.num_features[-1]
    sd["norm.weight"], sd["norm.bias"] = torch.randn(c), torch.randn(c)
    sd["head.weight"], sd["head.bias"] = torch.randn(num_classes, c), torch.randn(num_classes)
    return sd


def test_original_classification_checkpoint(tmp_path, caplog):
    src = make_model(seed=0)
    path = tmp_path / "dinat_in1k.pth"
    torch.save(original_classification_state_dict(src), path)

    converted = convert_checkpoint(torch.load(path, weights_only=True))
    assert not any(k.startswith(("head.", "norm.")) for k in converted)
    assert set(converted) == set(src.state_dict()) - {f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")}

    dst = make_model(seed=1)
    with caplog.at_level(logging.INFO):
        result = load_pretrained(dst, str(path))
    assert sorted(result.missing_keys) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert result.unexpected_keys == []
    assert "missing keys" in caplog.text and "norm0.weight" in caplog.text
    assert "head.weight" in caplog.text  # the drop is reported, not silent
    assert_same_state(src, dst, skip=("norm0", "norm1", "norm2", "norm3"))


def test_original_detector_checkpoint_round_trips(tmp_path):
    src = make_model(seed=0)
    ckpt = {
        "meta": {"epoch": 36, "CLASSES": ["person", "car"], "mmdet_version": "2.28.2"},
        "state_dict": OrderedDict(
            [("backbone." + k, v) for k, v in src.state_dict().items()]
            + [("neck.lateral_convs.0.conv.weight", torch.randn(8, 16, 1, 1)),
               ("rpn_head.rpn_conv.weight", torch.randn(8, 8, 3, 3)),
               ("roi_head.bbox_head.0.fc_cls.weight", torch.randn(3, 8))]),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
    }
    path = tmp_path / "cascade_mask_rcnn_dinat.pth"
    torch.save(ckpt, path)
    converted = convert_checkpoint(torch.load(path, weights_only=True))
    assert set(converted) == set(src.state_dict())

    dst = make_model(seed=1)
    result = load_pretrained(dst, str(path), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_outputs(src, dst, X)


@pytest.mark.parametrize("wrap", ["model", "state_dict_module", "module_raw", "nested"])
def test_mmengine_and_ddp_wrappers(wrap):
    src = make_model(seed=0)
    sd = src.state_dict()
    if wrap == "model":
        obj = {"model": dict(sd), "epoch": 3}
    elif wrap == "state_dict_module":
        obj = {"meta": {}, "state_dict": {"module.backbone." + k: v for k, v in sd.items()}}
    elif wrap == "module_raw":
        obj = {"module." + k: v for k, v in sd.items()}
    else:
        obj = {"state_dict": {"model": {"module.backbone." + k: v for k, v in sd.items()}}}
    dst = make_model(seed=1)
    result = load_pretrained(dst, obj, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_outputs(src, dst, X)


def test_init_cfg_pretrained_loads_in_init_weights_only(tmp_path):
    src = make_model(seed=0)
    path = tmp_path / "seg.pth"
    torch.save({"state_dict": {"backbone." + k: v for k, v in src.state_dict().items()},
                "meta": {}}, path)
    dst = make_model(init_cfg=dict(type="Pretrained", checkpoint=str(path)), frozen_stages=1)
    assert not torch.equal(dst.patch_embed.proj[0].weight, src.patch_embed.proj[0].weight)  # nothing at construction
    dst.init_weights()
    assert_same_state(src, dst)
    assert not dst.patch_embed.proj[0].weight.requires_grad  # still frozen after loading
    with pytest.raises(ValueError, match="Pretrained"):
        make_model(init_cfg=dict(type="Kaiming")).init_weights()


# ----------------------------------------------------------------------------------------------
# Loading rules
# ----------------------------------------------------------------------------------------------
def test_rpb_of_another_kernel_size_is_resized_bicubically(caplog):
    src = make_model(seed=0, kernel_size=5)
    dst = make_model(seed=1, kernel_size=7)
    with caplog.at_level(logging.INFO):
        result = load_pretrained(dst, src.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    key = "levels.1.blocks.0.attn.rpb"
    rpb = src.state_dict()[key]
    assert dst.state_dict()[key].shape == (2, 13, 13)
    expected = F.interpolate(rpb[None], size=(13, 13), mode="bicubic", align_corners=False)[0]
    torch.testing.assert_close(dst.state_dict()[key], expected)
    torch.testing.assert_close(resize_rpb(rpb, 13), expected)
    assert "resized" in caplog.text and key in caplog.text
    assert_same_state(src, dst, skip=tuple(f"levels.{i}.blocks.{j}.attn.rpb" for i in range(4) for j in range(2)))


def test_shape_mismatch_is_an_error_naming_key_and_shapes():
    src = make_model(embed_dim=32)
    dst = make_model()
    with pytest.raises(ValueError) as info:
        load_pretrained(dst, src.state_dict())
    msg = str(info.value)
    assert "patch_embed.proj.0.weight" in msg and "[16, 3, 3, 3]" in msg and "[8, 3, 3, 3]" in msg
    # rpb with another number of heads is not a kernel-size change: an error too
    src = make_model(num_heads=(2, 2, 2, 4))
    with pytest.raises(ValueError, match=r"levels\.0\.blocks\.0\.attn\.rpb"):
        load_pretrained(make_model(), src.state_dict())


def test_missing_and_unexpected_keys_are_logged(caplog):
    sd = make_model(seed=0).state_dict()
    del sd["levels.3.blocks.1.mlp.fc2.bias"]
    sd["levels.0.blocks.0.attn.extra_table"] = torch.zeros(3)
    logger = logging.getLogger("test_dinat_loader")
    with caplog.at_level(logging.WARNING, logger="test_dinat_loader"):
        result = load_pretrained(make_model(), sd, logger=logger, allow_missing=True)  # else an error (issue 20)
    assert result.missing_keys == ["levels.3.blocks.1.mlp.fc2.bias"]
    assert result.unexpected_keys == ["levels.0.blocks.0.attn.extra_table"]
    records = [r for r in caplog.records if r.name == "test_dinat_loader"]
    assert any("levels.3.blocks.1.mlp.fc2.bias" in r.getMessage() and "missing" in r.getMessage() for r in records)
    assert any("extra_table" in r.getMessage() and "unexpected" in r.getMessage() for r in records)
    with pytest.raises(RuntimeError):
        load_pretrained(make_model(), sd, strict=True)


class _NotATensor:
    pass


def test_torch_load_is_weights_only(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": make_model().state_dict(), "meta": _NotATensor()}, path)
    with pytest.raises(RuntimeError, match="weights_only"):
        load_pretrained(make_model(), str(path))


def test_checkpoint_urls():
    assert CHECKPOINT_URLS["dinat_tiny_in1k_224"] == \
        "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_tiny_in1k_224.pth"
    assert CHECKPOINT_URLS["dinat_large_in22k_224"].endswith("/imagenet22k/dinat_large_in22k_224.pth")


# ----------------------------------------------------------------------------------------------
# HF transformers (test-only dependency)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dinat():
    """transformers' modeling_dinat through dinat_backbone.hf (transformers 5.x's own forward fails with
    any natten; tests/test_hf_reference.py checks the bridge against 4.46.3 on natten-mps's old ops)."""
    import dinat_backbone.hf as hf

    hf.enable()
    import transformers.models.dinat.modeling_dinat as md

    yield md
    hf.disable()


def hf_config(md, **kwargs):
    return tiny_dinat_config(md, DEPTHS, HEADS, DILATIONS, **kwargs)


def perturbed(model, seed=0):
    return perturb_(model, seed=seed).eval()


@pytest.mark.parametrize("size", [(37, 45), (160, 224)], ids=["needs-padding", "no-padding"])
def test_hf_dinat_backbone_feature_maps_match(hf_dinat, size):
    features = ["stem", "stage1", "stage2", "stage3", "stage4"]
    hf = perturbed(hf_dinat.DinatBackbone(hf_config(hf_dinat, out_features=features)))
    converted = convert_checkpoint(hf.state_dict())
    model = make_model(out_features=features)
    assert set(converted) == set(model.state_dict())
    model.load_state_dict(converted, strict=True)
    # the size that needs padding really does (stage-1 map 10x12 < 5 * 4), the other does not
    needs_pad = any(min(size[0] // s, size[1] // s) < 5 * d for s, d in ((4, 4), (8, 3), (16, 2), (32, 1)))
    assert needs_pad == (size == (37, 45))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf(x).feature_maps
        out = model(x)
    assert len(out) == len(ref) == 5
    for a, b in zip(out, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_hf_key_mapping_and_qkv_concatenation(hf_dinat):
    hf = perturbed(hf_dinat.DinatBackbone(hf_config(hf_dinat, out_features=["stage1", "stage2", "stage3", "stage4"])))
    hsd = hf.state_dict()
    sd = convert_checkpoint(hsd)
    hf_layer = "encoder.levels.2.layers.1."
    ours = "levels.2.blocks.1."
    for kind in ("weight", "bias"):
        torch.testing.assert_close(sd[ours + f"attn.qkv.{kind}"], torch.cat(
            [hsd[hf_layer + f"attention.self.{n}.{kind}"] for n in ("query", "key", "value")]), rtol=0, atol=0)
    pairs = {
        "embeddings.patch_embeddings.projection.1.weight": "patch_embed.proj.1.weight",
        "embeddings.norm.bias": "patch_embed.norm.bias",
        hf_layer + "attention.self.rpb": ours + "attn.rpb",
        hf_layer + "attention.output.dense.weight": ours + "attn.proj.weight",
        hf_layer + "layernorm_before.weight": ours + "norm1.weight",
        hf_layer + "layernorm_after.bias": ours + "norm2.bias",
        hf_layer + "intermediate.dense.weight": ours + "mlp.fc1.weight",
        hf_layer + "output.dense.bias": ours + "mlp.fc2.bias",
        "encoder.levels.1.downsample.reduction.weight": "levels.1.downsample.reduction.weight",
        "hidden_states_norms.stage4.weight": "norm3.weight",
    }
    for hf_key, key in pairs.items():
        assert torch.equal(sd[key], hsd[hf_key]), (hf_key, key)
    assert torch.equal(sd[ours + "gamma1"], hsd[hf_layer + "layer_scale_parameters"][0])
    assert torch.equal(sd[ours + "gamma2"], hsd[hf_layer + "layer_scale_parameters"][1])


@pytest.mark.parametrize("cls", ["DinatModel", "DinatForImageClassification"])
def test_hf_classification_models_convert(hf_dinat, cls, caplog, tmp_path):
    config = hf_config(hf_dinat, num_labels=7)
    hf = perturbed(getattr(hf_dinat, cls)(config))
    hsd = hf.state_dict()
    if cls == "DinatForImageClassification":  # as on the HF hub: model.safetensors
        assert any(k.startswith("dinat.") for k in hsd) and any(k.startswith("classifier.") for k in hsd)
        import safetensors.torch as safetensors_torch
        path = tmp_path / "model.safetensors"
        safetensors_torch.save_file({k: v.contiguous() for k, v in hsd.items()}, str(path))
        hsd = str(path)
    model = make_model(seed=3)
    with caplog.at_level(logging.INFO):
        result = load_pretrained(model, hsd)
    assert sorted(result.missing_keys) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert result.unexpected_keys == []
    assert "layernorm.weight" in caplog.text  # the final norm is dropped visibly
    # the stage outputs before the output norms equal HF's hidden states (before downsampling)
    x = torch.randn(1, 3, 40, 52)
    inner = hf.dinat if cls == "DinatForImageClassification" else hf
    with torch.no_grad():
        hf_out = inner.encoder(inner.embeddings(x), output_hidden_states=True,
                               output_hidden_states_before_downsampling=True).reshaped_hidden_states
        y = model.patch_embed(x)
        for i, level in enumerate(model.levels):
            stage, y = level(y)
            torch.testing.assert_close(stage.permute(0, 3, 1, 2), hf_out[i + 1], rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# DiNAT_s (Swin layout): the authors' classification, detection / segmentation and mmengine files
# ----------------------------------------------------------------------------------------------
def make_s_model(seed=None, **kwargs):
    from dinat_backbone import DiNAT_s

    cfg = dict(embed_dim=16, depths=DEPTHS, num_heads=HEADS, mlp_ratio=2.0, kernel_size=5, dilations=DILATIONS,
               drop_path_rate=0.0)
    cfg.update(kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    model = DiNAT_s(**cfg)
    if seed is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_dinat_s_imagenet_classifier_checkpoint(tmp_path, caplog):
    """classification/dinats.py: the backbone keys without norm0..3, plus the final norm and head."""
    src = make_s_model(seed=0)
    sd = original_classification_state_dict(src, num_classes=7)
    assert "patch_embed.proj.weight" in sd and "layers.1.downsample.reduction.weight" in sd
    path = tmp_path / "dinat_s_tiny_in1k_224.pth"
    torch.save(sd, path)
    converted = convert_checkpoint(torch.load(path, weights_only=True))
    assert set(converted) == set(src.state_dict()) - {f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    dst = make_s_model(seed=1)
    with caplog.at_level(logging.INFO):
        result = load_pretrained(dst, str(path))
    assert sorted(result.missing_keys) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert result.unexpected_keys == [] and "head.weight" in caplog.text
    assert_same_state(src, dst, skip=("norm0", "norm1", "norm2", "norm3"))
    # the stage outputs before the output norms are the classifier's
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        a, b = src.patch_embed(x), dst.patch_embed(x)
        for la, lb in zip(src.layers, dst.layers):
            (sa, a), (sb, b) = la(a), lb(b)
            torch.testing.assert_close(sa, sb, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["detector", "segmentor", "mmengine_ddp", "model_wrapper"])
def test_dinat_s_detector_segmentor_and_mmengine_files_round_trip(tmp_path, layout):
    src = make_s_model(seed=0)
    sd = src.state_dict()
    if layout == "detector":  # the authors' COCO files: mmdet 2.x state_dict with backbone. and heads
        obj = {"meta": {"epoch": 36}, "state_dict": OrderedDict(
            [("backbone." + k, v) for k, v in sd.items()]
            + [("neck.lateral_convs.0.conv.weight", torch.randn(8, 16, 1, 1)),
               ("roi_head.bbox_head.0.fc_cls.weight", torch.randn(3, 8))])}
    elif layout == "segmentor":  # ADE20K UPerNet files
        obj = {"meta": {"iter": 160000}, "state_dict": OrderedDict(
            [("backbone." + k, v) for k, v in sd.items()]
            + [("decode_head.conv_seg.weight", torch.randn(150, 512, 1, 1)),
               ("auxiliary_head.conv_seg.weight", torch.randn(150, 256, 1, 1))])}
    elif layout == "mmengine_ddp":
        obj = {"meta": {}, "state_dict": {"module.backbone." + k: v for k, v in sd.items()}, "message_hub": {}}
    else:
        obj = {"model": dict(sd), "epoch": 3}
    path = tmp_path / f"{layout}.pth"
    torch.save(obj, path)
    dst = make_s_model(seed=1)
    result = load_pretrained(dst, str(path), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_outputs(src, dst, X)
    dst = make_s_model(seed=1, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    dst.init_weights()
    assert_same_outputs(src, dst, X)


def test_checkpoint_family_and_cross_family_loading_is_an_error():
    from dinat_backbone.checkpoint import checkpoint_family

    dinat_sd, s_sd = make_model(seed=0).state_dict(), make_s_model(seed=0).state_dict()
    assert checkpoint_family(dinat_sd) == "DiNAT" and checkpoint_family(s_sd) == "DiNAT_s"
    assert checkpoint_family({"head.weight": torch.zeros(1)}) is None
    with pytest.raises(ValueError) as info:
        load_pretrained(make_model(), {"state_dict": {"backbone." + k: v for k, v in s_sd.items()}})
    msg = str(info.value)
    assert "checkpoint is a DiNAT_s backbone" in msg and "layers.i.blocks.j" in msg and "DiNAT_s(arch=...)" in msg
    assert "type='DiNAT_s'" in msg
    with pytest.raises(ValueError, match=r"checkpoint is a DiNAT backbone .*levels\.i\.blocks\.j.* into DiNAT\(arch"):
        load_pretrained(make_s_model(), dinat_sd)
    with pytest.raises(ValueError, match=r"DiNAT_s backbone"):  # also through init_cfg
        make_model(init_cfg=dict(type="Pretrained", checkpoint=s_sd)).init_weights()


def test_dinat_s_checkpoint_urls():
    assert CHECKPOINT_URLS["dinat_s_tiny_in1k_224"] == \
        "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_tiny_in1k_224.pth"
    assert CHECKPOINT_URLS["dinat_s_large_in22k_224"].endswith("/imagenet22k/dinat_s_large_in22k_224.pth")
    assert {k for k in CHECKPOINT_URLS if k.startswith("dinat_s_")} == {
        "dinat_s_tiny_in1k_224", "dinat_s_small_in1k_224", "dinat_s_base_in1k_224", "dinat_s_large_in1k_224",
        "dinat_s_large_in1k_384", "dinat_s_large_in22k_224"}
