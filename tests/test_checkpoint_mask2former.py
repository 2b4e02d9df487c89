"""Checkpoints of the authors' Mask2Former runs (torch alone, no mm stack):

* the trained Mask2Former models are detectron2 files, ``{'model': {'backbone.…', 'sem_seg_head.…',
  'criterion.…', 'pixel_mean', …}, '__author__': …, 'iteration': …}``;
* the backbone starts from the ImageNet-22k DiNAT-L checkpoint (7x7 rpb tables), loaded into the
  kernel-11 backbone with the tables resized bicubically to 11x11 (the authors' "11x11interp" file).
"""
from collections import OrderedDict

import pytest
import torch

from dinat_backbone import DILATION_PRESETS, DiNAT, convert_checkpoint, load_pretrained
from dinat_backbone.checkpoint import resize_rpb

from test_checkpoint import assert_same_outputs, make_model, original_classification_state_dict

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one thread, no kernel warning


def detectron2_mask2former_checkpoint(backbone: torch.nn.Module) -> dict:
    """A Mask2Former model as detectron2's ``DetectionCheckpointer`` saves it (the authors'
    ``mask2former_dinat_large_*.pth``): ``MaskFormer.backbone`` (D2DiNAT, the native keys),
    ``sem_seg_head`` (pixel decoder + transformer predictor), the criterion's buffer, the pixel
    normalisation buffers, and detectron2's top-level extras."""
    g = torch.Generator().manual_seed(3)
    model = OrderedDict(("backbone." + k, v.clone()) for k, v in backbone.state_dict().items())
    c = backbone.num_features
    model.update({
        "sem_seg_head.pixel_decoder.input_proj.0.0.weight": torch.randn(8, c[-1], 1, 1, generator=g),
        "sem_seg_head.pixel_decoder.transformer.level_embed": torch.randn(3, 8, generator=g),
        "sem_seg_head.pixel_decoder.mask_features.weight": torch.randn(8, 8, 1, 1, generator=g),
        "sem_seg_head.predictor.query_feat.weight": torch.randn(200, 8, generator=g),
        "sem_seg_head.predictor.query_embed.weight": torch.randn(200, 8, generator=g),
        "sem_seg_head.predictor.class_embed.weight": torch.randn(134, 8, generator=g),
        "criterion.empty_weight": torch.ones(134),
        "pixel_mean": torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1),
        "pixel_std": torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1),
    })
    return {"model": model, "__author__": "SHI-Labs", "iteration": 737499, "matching_heuristics": True}


def test_detectron2_mask2former_checkpoint_loads_the_backbone(tmp_path):
    src = make_model(seed=0)
    path = tmp_path / "mask2former_dinat_large_coco_panoptic.pth"
    torch.save(detectron2_mask2former_checkpoint(src), path)

    converted = convert_checkpoint(torch.load(path, weights_only=True))
    assert set(converted) == set(src.state_dict())  # heads, criterion, pixel mean / std left out

    dst = make_model(seed=1)
    result = load_pretrained(dst, str(path), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_outputs(src, dst, torch.randn(1, 3, 48, 56))


def test_detectron2_mask2former_checkpoint_through_init_cfg(tmp_path):
    src = make_model(seed=0)
    path = tmp_path / "mask2former_dinat_large_ade20k_semantic.pth"
    torch.save(detectron2_mask2former_checkpoint(src), path)
    dst = make_model(seed=1, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    dst.init_weights()
    assert_same_outputs(src, dst.eval(), torch.randn(1, 3, 40, 40))


def test_mask2former_dilation_preset_is_the_authors():
    """mask2former/configs/*/dinat/maskformer2_dinat_large_IN21k_384_bs16_*.yaml, all tasks."""
    authors = [[1, 14, 1], [1, 4, 1, 7], [1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 3], [1, 1, 1, 1, 1]]
    assert DILATION_PRESETS["mask2former-k11"] == authors
    with torch.device("meta"):  # structure only
        model = DiNAT(arch="large", kernel_size=11, dilations="mask2former-k11")
    assert [[b.attn.dilation for b in level.blocks] for level in model.levels] == authors
    assert {tuple(b.attn.rpb.shape[1:]) for level in model.levels for b in level.blocks} == {(21, 21)}


def test_imagenet22k_dinat_large_7x7_rpb_into_kernel_11_backbone(caplog):
    """The ImageNet-22k DiNAT-L file (classification layout: head + final norm, 7x7 kernel, rpb
    [heads, 13, 13]) into the Mask2Former backbone (kernel 11): every rpb becomes the bicubic
    resize of the file's table to [heads, 21, 21], every other weight is copied, outputs are finite.
    Built at DiNAT-L's widths and heads on a shortened stage 3 (CPU cost); the key layout is
    DiNAT-L's."""
    depths = (3, 4, 2, 5)  # DiNAT-L: (3, 4, 18, 5); stage 3's blocks are all alike
    large = dict(arch="large", depths=depths, drop_path_rate=0.0)
    torch.manual_seed(0)
    src = DiNAT(kernel_size=7, dilations="in1k-224", **large)
    ckpt = original_classification_state_dict(src, num_classes=21841)
    dst = DiNAT(kernel_size=11, dilations="mask2former-k11", **large).eval()
    with caplog.at_level("INFO", logger="dinat_backbone.checkpoint"):
        result = load_pretrained(dst, ckpt)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))

    own = dst.state_dict()
    rpb_keys = [k for k in own if k.endswith("attn.rpb")]
    assert len(rpb_keys) == sum(depths)
    for key in rpb_keys:
        heads = src.state_dict()[key].shape[0]
        assert ckpt[key].shape == (heads, 13, 13) and own[key].shape == (heads, 21, 21)
        expected = torch.nn.functional.interpolate(ckpt[key][None], size=(21, 21), mode="bicubic",
                                                   align_corners=False)[0]
        torch.testing.assert_close(own[key], expected, rtol=0, atol=0)
        torch.testing.assert_close(own[key], resize_rpb(ckpt[key], 21), rtol=0, atol=0)
        assert key in caplog.text
    for key, value in ckpt.items():
        if key in own and not key.endswith("attn.rpb"):
            assert torch.equal(own[key], value), key
    with torch.no_grad():
        outs = dst(torch.randn(1, 3, 96, 128))
    assert [tuple(o.shape[1:]) for o in outs] == [(192, 24, 32), (384, 12, 16), (768, 6, 8), (1536, 3, 4)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_detectron2_pkl_weights_name_the_way_to_read_them(tmp_path):
    """The authors' Mask2Former configs start from ``dinat_large_in22k_224.pkl``, written by their
    tools/convert-pretrained-dinat-model-to-d2.py with ``pickle.dump`` (not torch.save), so torch.load
    cannot read it with or without weights_only: the error says to use pickle.load, and the dict
    that gives loads like the .pth it was made from."""
    import pickle

    src = make_model(seed=0)
    path = tmp_path / "dinat_large_in22k_224.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": original_classification_state_dict(src), "__author__": "third_party",
                     "matching_heuristics": True}, f)
    with pytest.raises(RuntimeError, match=r"plain pickle .*pickle\.load"):
        load_pretrained(make_model(seed=1), str(path))
    with open(path, "rb") as f:
        obj = pickle.load(f)
    dst = make_model(seed=1)
    result = load_pretrained(dst, obj)
    assert result.unexpected_keys == [] and all(k.startswith("norm") for k in result.missing_keys)
