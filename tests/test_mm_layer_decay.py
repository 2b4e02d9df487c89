"""DiNATLayerDecayOptimizerConstructor: depths read from the model, and every value it cannot mean
refused with the fix (issue 20). The rates themselves are checked in test_mm_glue.py. Real
mmengine constructors and optimizers, real DiNAT / NAT / DiNAT_s backbones, no mocks."""
import pytest
import torch.nn as nn

import mmdet  # noqa: F401  (a missing mm stack is an error, not a skip)
from mmengine.optim import build_optim_wrapper

import dinat_backbone
import dinat_backbone.mm as mm


class Detector(nn.Module):
    """A backbone and a head, named as mmdet / mmseg models name them."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(8, 2)


def _model(cls=dinat_backbone.DiNAT, **kwargs):
    kwargs.setdefault("depths", (2, 1, 2, 1))
    return Detector(cls(arch="mini" if cls is not dinat_backbone.DiNAT_s else "tiny", **kwargs))


def _build(model, paramwise_cfg="absent"):
    cfg = dict(type="OptimWrapper", constructor="DiNATLayerDecayOptimizerConstructor",
               optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05))
    if paramwise_cfg != "absent":
        cfg["paramwise_cfg"] = paramwise_cfg
    return build_optim_wrapper(model, cfg)


def _lrs(wrapper):
    return {n: g["lr"] for g in wrapper.optimizer.param_groups for n in g["param_names"]}


@pytest.mark.parametrize("cls", [dinat_backbone.DiNAT, dinat_backbone.NAT, dinat_backbone.DiNAT_s])
def test_layer_ids_come_from_the_models_own_modules(cls):
    """Every parameter of the patch embedding, the blocks and the downsamplers has an id, named
    as the model names it (levels.* / layers.*); only the output norms are left to the last id."""
    model = _model(cls)
    backbone = model.backbone
    ids = mm.layer_ids(backbone, "layer_wise", "backbone.")
    params = {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
    assert set(ids) == {n for n in params if not n.startswith("backbone.norm")}
    s = backbone.stage_attr
    assert ids["backbone.patch_embed." + next(n for n, _ in backbone.patch_embed.named_parameters())] == 0
    assert ids[f"backbone.{s}.0.blocks.0.attn.qkv.weight"] == 1
    assert ids[f"backbone.{s}.2.blocks.1.mlp.fc1.weight"] == 5
    assert {ids[n] for n in ids if n.startswith(f"backbone.{s}.1.downsample.")} == {4}  # feeds stage 3's first block
    stage = mm.layer_ids(backbone, "stage_wise", "backbone.")
    assert stage[f"backbone.{s}.2.blocks.1.mlp.fc1.weight"] == 3
    assert {stage[n] for n in stage if n.startswith(f"backbone.{s}.1.downsample.")} == {3}
    assert mm.layer_ids(backbone)[f"{s}.0.blocks.0.attn.qkv.weight"] == 1  # the backbone on its own


def test_smaller_num_layers_decays_only_the_first_blocks_and_prefix_without_dot():
    rate = 0.5
    lrs = _lrs(_build(_model(), dict(decay_rate=rate, num_layers=3, backbone_prefix="backbone")))
    assert lrs["backbone.patch_embed.proj.0.weight"] == pytest.approx(1e-3 * rate ** 4)
    assert lrs["backbone.levels.1.blocks.0.attn.qkv.weight"] == pytest.approx(1e-3 * rate ** 1)  # id 3
    assert lrs["backbone.levels.2.blocks.0.attn.qkv.weight"] == pytest.approx(1e-3)  # id 4 > num_layers: base lr
    assert lrs["head.weight"] == pytest.approx(1e-3)


@pytest.mark.parametrize("paramwise_cfg, message", [
    ("absent", r"needs paramwise_cfg with at least decay_rate .*paramwise_cfg=dict\(decay_rate=0\.9\)"),
    (None, r"needs paramwise_cfg with at least decay_rate"),
    (dict(), r"needs paramwise_cfg with at least decay_rate"),
    (dict(decay_type="layer_wise"), r"needs paramwise_cfg\['decay_rate'\] \(e\.g\. 0\.9"),
    (dict(decay_rate=-0.5), r"'decay_rate'\] must be in \(0, 1\] .*got -0\.5; e\.g\. 0\.9"),
    (dict(decay_rate=0.0), r"'decay_rate'\] must be in \(0, 1\].*frozen_stages"),
    (dict(decay_rate=1.5), r"'decay_rate'\] must be in \(0, 1\]"),
    (dict(decay_rate=float("nan")), r"'decay_rate'\] must be a finite number, got nan"),
    (dict(decay_rate=float("inf")), r"'decay_rate'\] must be a finite number, got inf"),
    (dict(decay_rate="0.9"), r"'decay_rate'\] must be a finite number, got '0\.9'"),
    (dict(decay_rate=True), r"'decay_rate'\] must be a finite number, got True"),
    (dict(decay_rate=0.9, decay_type="block_wise"), r"'decay_type'\] must be one of \('layer_wise', 'stage_wise'\)"),
    (dict(decay_rate=0.9, norm_decay_mult=0.0), r"unknown paramwise_cfg key\(s\) \['norm_decay_mult'\].*custom_keys"),
    (dict(decay_rate=0.9, custom_keys={"rpb": 0.0}), r"'custom_keys'\] must map name parts to dict\(lr_mult"),
    (dict(decay_rate=0.9, custom_keys={"rpb": dict(decay_mul=0.0)}), r"must map name parts to dict\(lr_mult"),
    (dict(decay_rate=0.9, custom_keys={"rpb": dict(lr_mult=float("nan"))}),
     r"\['custom_keys'\]\['rpb'\]\['lr_mult'\] must be a finite number, got nan"),
    (dict(decay_rate=0.9, custom_keys={"rpb": dict(lr_mult=-1.0)}),
     r"\['custom_keys'\]\['rpb'\]\['lr_mult'\] must be >= 0"),
])
def test_config_values_it_cannot_mean_are_refused(paramwise_cfg, message):
    with pytest.raises(ValueError, match=message):
        _build(_model(), paramwise_cfg)


@pytest.mark.parametrize("num_layers", [7, 100, -1, 0, 2.5, True, "6"])
def test_num_layers_is_checked_against_the_models_block_count(num_layers):
    with pytest.raises(ValueError, match=rf"'num_layers'\]={num_layers!r}, but the backbone DiNAT has 6 blocks "
                                         r"\(layer_wise\); num_layers must be an integer in 1\.\.6 \(leave it out"):
        _build(_model(), dict(decay_rate=0.9, num_layers=num_layers))


def test_stage_wise_num_layers_counts_stages_and_the_full_depth_is_accepted():
    with pytest.raises(ValueError, match=r"DiNAT_s has 4 stages \(stage_wise\); .* 1\.\.4"):
        _build(_model(dinat_backbone.DiNAT_s), dict(decay_rate=0.9, decay_type="stage_wise", num_layers=6))
    explicit = _lrs(_build(_model(), dict(decay_rate=0.9, num_layers=6)))
    assert explicit == _lrs(_build(_model(), dict(decay_rate=0.9)))  # num_layers = the block count: the default


def test_no_dinat_backbone_at_the_prefix_names_the_key():
    with pytest.raises(ValueError, match=r"no DiNAT/NAT backbone \(nor DiNAT_s\) at 'encoder\.' \(got NoneType\); "
                                         r"set paramwise_cfg\['backbone_prefix'\]"):
        _build(_model(), dict(decay_rate=0.9, backbone_prefix="encoder."))
