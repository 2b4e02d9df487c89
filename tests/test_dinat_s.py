"""DiNAT_s (the Swin-layout DiNAT): module layout and keys, presets, the forward against a direct
computation, odd sizes, the backbone behaviour it shares with DiNAT, compile and ONNX export."""
import math

import pytest
import torch
import torch.nn.functional as F
import conftest
from conftest import load_tool

from dinat_backbone import MODEL_FAMILIES, DiNAT, DiNAT_s
from dinat_backbone.dinat import DiNATBackboneBase, DiNATBlock, DiNATLevel
from dinat_backbone.dinat_s import ARCH_SETTINGS, DILATION_PRESETS, PatchEmbed, PatchMerging

pytestmark = pytest.mark.usefixtures("single_thread")


def small_model(seed=0, **kwargs):
    """The tests' small model in the DiNAT_s layout, parameters moved off their init."""
    return conftest.small_model(DiNAT_s, seed=seed, perturb=True, **kwargs)


# ----------------------------------------------------------------------------------------------
# Layout, variants, presets
# ----------------------------------------------------------------------------------------------
def test_state_dict_keys_are_the_authors_ones():
    """detection/dinats.py: patch_embed.{proj, norm}, layers.i.blocks.j.*, layers.i.downsample.{norm,
    reduction} (Swin patch merging), norm{i}; mlp_ratio 4, no layer scale."""
    with torch.device("meta"):
        model = DiNAT_s(arch="tiny", dilations="coco")
    sd = model.state_dict()
    expected = {"patch_embed.proj.weight": (96, 3, 4, 4), "patch_embed.proj.bias": (96,),
                "patch_embed.norm.weight": (96,), "layers.0.blocks.1.norm1.weight": (96,),
                "layers.0.blocks.1.attn.qkv.weight": (288, 96), "layers.0.blocks.1.attn.rpb": (3, 13, 13),
                "layers.0.blocks.1.attn.proj.weight": (96, 96), "layers.0.blocks.1.norm2.bias": (96,),
                "layers.0.blocks.1.mlp.fc1.weight": (384, 96), "layers.0.blocks.1.mlp.fc2.weight": (96, 384),
                "layers.0.downsample.norm.weight": (384,), "layers.0.downsample.reduction.weight": (192, 384),
                "layers.2.blocks.5.attn.rpb": (12, 13, 13), "layers.2.downsample.reduction.weight": (768, 1536),
                "norm0.weight": (96,), "norm3.bias": (768,)}
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layers.0.downsample.reduction.bias" not in sd and not any(k.startswith("layers.3.downsample") for k in sd)
    assert not any("gamma" in k for k in sd) and not any(k.startswith("levels.") for k in sd)
    assert all(k.startswith(("patch_embed.", "layers.", "norm0.", "norm1.", "norm2.", "norm3.")) for k in sd)
    assert isinstance(model.layers[0], DiNATLevel) and isinstance(model.layers[0].blocks[0], DiNATBlock)
    assert isinstance(model.patch_embed, PatchEmbed) and isinstance(model.layers[0].downsample, PatchMerging)
    assert model.stages is model.layers and isinstance(model, DiNATBackboneBase) and not isinstance(model, DiNAT)


@pytest.mark.parametrize("arch,embed_dim,depths,heads", [
    ("tiny", 96, (2, 2, 6, 2), (3, 6, 12, 24)), ("small", 96, (2, 2, 18, 2), (3, 6, 12, 24)),
    ("base", 128, (2, 2, 18, 2), (4, 8, 16, 32)), ("large", 192, (2, 2, 18, 2), (6, 12, 24, 48))])
def test_variants(arch, embed_dim, depths, heads):
    with torch.device("meta"):
        model = DiNAT_s(arch=arch)
    assert (model.embed_dim, model.depths, model.num_heads, model.mlp_ratio) == (embed_dim, depths, heads, 4.0)
    assert model.layer_scale is None and model.out_channels == [embed_dim * 2 ** i for i in range(4)]
    assert ARCH_SETTINGS[arch]["embed_dim"] == embed_dim
    assert DiNAT_s().embed_dim == 96 and DiNAT_s().depths == (2, 2, 6, 2)  # without arch: tiny
    with pytest.raises(ValueError, match=r"DiNAT_s: unknown arch 'mini'"):
        DiNAT_s(arch="mini")


def test_dilation_presets_are_the_authors_configs():
    """Literal dilations of the authors' classification/dinats.py, detection/configs/dinat_s/ and
    segmentation/configs/dinat_s/."""
    def dil(arch, preset):
        with torch.device("meta"):
            return DiNAT_s(arch=arch, dilations=preset).dilations

    assert dil("tiny", "in1k-224") == [[1, 8], [1, 4], [1, 2, 1, 2, 1, 2], [1, 1]]
    assert dil("base", "in1k-224") == [[1, 8], [1, 4], [1, 2] * 9, [1, 1]]
    assert dil("large", "in1k-384") == [[1, 13], [1, 6], [1, 3] * 9, [1, 1]]
    assert dil("tiny", "coco") == [[1, 28], [1, 14], [1, 3, 1, 5, 1, 7], [1, 3]]
    for arch in ("small", "base", "large"):
        assert dil(arch, "coco") == [[1, 28], [1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3]]
    assert dil("tiny", "ade20k-512") == [[1, 16], [1, 8], [1, 2, 1, 3, 1, 4], [1, 2]]
    assert dil("small", "ade20k-512") == [[1, 16], [1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2]]
    assert dil("large", "ade20k-640") == [[1, 20], [1, 10], [1, 2, 1, 3, 1, 4, 1, 5] * 2 + [1, 5], [1, 2]]
    assert set(DILATION_PRESETS) == {"in1k-224", "in1k-384", "coco", "ade20k-512", "ade20k-640"}
    with torch.device("meta"):
        model = DiNAT_s(arch="tiny", dilations="coco")
    assert [[b.attn.dilation for b in layer.blocks] for layer in model.layers] == dil("tiny", "coco")
    with pytest.raises(ValueError, match=r"DiNAT_s: unknown dilation preset 'ade20k'.*'in1k-384'"):
        DiNAT_s(dilations="ade20k")


def test_model_families_table():
    assert MODEL_FAMILIES["dinat_s"] is DiNAT_s and MODEL_FAMILIES["dinat"] is DiNAT


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
def direct_forward(model, x):
    """Tokenizer, stages and downsamplers written out directly from the Swin / DiNAT_s definition:
    zero-pad the image to a multiple of 4, 4x4/4 convolution, LayerNorm; blocks; LayerNorm{i} of
    each stage output; patch merging = zero-pad to even size, 2x2 neighbourhood features in the
    order (row, col) = (0, 0), (1, 0), (0, 1), (1, 1), LayerNorm, Linear."""
    B, _, H, W = x.shape
    pe = model.patch_embed
    xp = x.new_zeros(B, 3, math.ceil(H / 4) * 4, math.ceil(W / 4) * 4)
    xp[:, :, :H, :W] = x
    y = F.conv2d(xp, pe.proj.weight, pe.proj.bias, stride=4).permute(0, 2, 3, 1)
    y = F.layer_norm(y, (y.shape[-1],), pe.norm.weight, pe.norm.bias)
    outs = []
    for i, layer in enumerate(model.layers):
        for block in layer.blocks:
            y = block(y)
        norm = getattr(model, f"norm{i}")
        outs.append(F.layer_norm(y, (y.shape[-1],), norm.weight, norm.bias).permute(0, 3, 1, 2))
        if layer.downsample is not None:
            ds = layer.downsample
            B, h, w, C = y.shape
            yp = y.new_zeros(B, h + h % 2, w + w % 2, C)
            yp[:, :h, :w] = y
            hh, ww = yp.shape[1] // 2, yp.shape[2] // 2
            groups = torch.stack([yp[:, dr::2, dc::2] for dc in (0, 1) for dr in (0, 1)], dim=3)  # [B, hh, ww, 4, C]
            y = groups.reshape(B, hh, ww, 4 * C)
            y = F.layer_norm(y, (4 * C,), ds.norm.weight, ds.norm.bias) @ ds.reduction.weight.t()
    return outs


@pytest.mark.parametrize("size", [(64, 64), (61, 47), (33, 90)])
def test_forward_matches_direct_computation_and_sizes(size):
    model = small_model().eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        outs = model(x)
        ref = direct_forward(model, x)
    h, w = size
    for i, (o, r) in enumerate(zip(outs, ref)):
        h, w = math.ceil(h / (4 if i == 0 else 2)), math.ceil(w / (4 if i == 0 else 2))
        assert o.shape == (2, 16 * 2 ** i, h, w) and o.is_contiguous()
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
    assert model.out_strides == [4, 8, 16, 32]


def test_patch_merging_order_is_the_original_swin_one():
    x = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(1, 2, 2, 3)  # one 2x2 neighbourhood, C=3
    merge = PatchMerging(3)
    with torch.no_grad():
        merge.norm.weight.fill_(1.0), merge.norm.bias.zero_()
        merge.reduction.weight.copy_(torch.eye(6, 12))
        captured = {}
        merge.norm.register_forward_hook(lambda m, i, o: captured.setdefault("in", i[0]))
        merge(x)
    # x0 = (0, 0), x1 = (1, 0), x2 = (0, 1), x3 = (1, 1)
    assert captured["in"].flatten().tolist() == torch.cat([x[0, 0, 0], x[0, 1, 0], x[0, 0, 1], x[0, 1, 1]]).tolist()


def test_out_features_stem_and_subsets():
    model = small_model(out_features=["stem", "stage2", "stage4"]).eval()
    assert model.out_indices == (1, 3) and model.out_channels == [16, 32, 128] and model.out_strides == [4, 8, 32]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 40, 40))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 10, 10), (1, 32, 5, 5), (1, 128, 2, 2)]
    assert small_model(out_indices=(-1,)).out_indices == (3,)


def test_small_input_padding_and_error_mode_name_the_layers_block():
    model = small_model(small_input="error").eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 160, 160))  # every map large enough: stage 1 40x40 >= 5 * 4, ...
        with pytest.raises(ValueError, match=r"DiNAT block layers\.0\.blocks\.1 .* 16x16 map"):
            model(torch.randn(1, 3, 64, 64))


# ----------------------------------------------------------------------------------------------
# Shared backbone behaviour
# ----------------------------------------------------------------------------------------------
def test_frozen_stages_and_train_mode():
    model = small_model(frozen_stages=2).train()
    frozen = [model.patch_embed, model.layers[0], model.layers[1], model.norm0, model.norm1]
    for m in frozen:
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    assert model.layers[2].training and all(p.requires_grad for p in model.layers[2].parameters())
    # the original crashed for frozen_stages >= 1 (self.ape); every value -1..4 works here
    for frozen_stages in range(-1, 5):
        small_model(frozen_stages=frozen_stages).train()
    with pytest.raises(ValueError, match=r"DiNAT_s: frozen_stages must be an integer in -1\.\.4"):
        small_model(frozen_stages=5)


def test_with_cp_and_lean_training_path_give_the_same_gradients():
    x = torch.randn(2, 3, 48, 52)
    results = []
    for with_cp in (False, True):
        model = small_model(with_cp=with_cp).train()
        block = model.layers[0].blocks[0]
        assert block._training()  # the lean path is taken in training
        outs = model(x)
        sum((o * torch.linspace(0, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append(([o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters()}))
    (o1, g1), (o2, g2) = results
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-5, atol=1e-6, msg=name)
    assert g1["layers.1.downsample.reduction.weight"].abs().sum() > 0
    assert g1["patch_embed.proj.weight"].abs().sum() > 0


def test_no_weight_decay_and_init():
    model = DiNAT_s(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
    names = model.no_weight_decay()
    assert "layers.0.blocks.0.attn.rpb" in names and "layers.0.downsample.norm.weight" in names
    assert "layers.0.downsample.reduction.weight" not in names and "patch_embed.norm.bias" in names
    assert torch.count_nonzero(model.layers[1].blocks[0].mlp.fc1.bias) == 0


def test_shared_argument_errors_name_dinat_s():
    with pytest.raises(ValueError, match=r"DiNAT_s: out_indices must be stage indices in 0\.\.3"):
        small_model(out_indices=(-5,))
    with pytest.raises(ValueError, match=r"DiNAT_s: dilations must be None, a preset name .*in1k-384.* one list"):
        small_model(dilations=2)
    with pytest.raises(TypeError, match=r"^DiNAT_s: unknown argument\(s\) 'patch_norm'"):
        small_model(patch_norm=True)
    with pytest.raises(TypeError, match=r"DiNAT_s: the image is torch.float16 .*torch.autocast\('cpu'"):
        small_model().eval()(torch.randn(1, 3, 32, 32, dtype=torch.float16))


def test_bf16_autocast_close_to_fp32():
    model = small_model().eval()
    x = torch.randn(1, 3, 64, 72)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    for g, r in zip(got, ref):
        assert float((g.float() - r).norm() / r.norm()) <= 2e-2


# ----------------------------------------------------------------------------------------------
# Compile and export (as tests/test_export.py does for DiNAT)
# ----------------------------------------------------------------------------------------------
def test_model_has_no_graph_breaks():
    torch._dynamo.reset()
    model = small_model().eval()
    explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 61, 90))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()


def test_onnx_dynamic_round_trip_odd_sizes(tmp_path):
    """One dynamic graph for sizes that need padding in the patch embedding and every merging
    (61x90) and sizes that do not (64x96): the tokenizer's and the merging's padding are traced
    without size branches. One block per stage: the exporter's time grows with the graph."""
    import onnx

    tool = load_tool("export_onnx")
    model = small_model(depths=(1, 1, 1, 1), dilations=[[4], [3], [2], [1]]).eval()
    path = str(tmp_path / "dinat_s.onnx")
    names = tool.export(model, torch.randn(1, 3, 64, 96), path, dynamic=True)
    proto = onnx.load(path)
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node), "custom operators in the graph"
    inputs = [torch.randn(2, 3, 64, 96), torch.randn(1, 3, 61, 90), torch.randn(3, 3, 37, 50)]
    for shape, errs in tool.check(model, path, inputs, names):
        assert max(errs) <= 1e-4, (shape, errs)
