"""DiNAT / NAT backbone: shapes, small-input padding, freezing, checkpointing, presets, init."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dinat_backbone import ARCH_SETTINGS, DILATION_PRESETS, NAT, DiNAT
from dinat_backbone.dinat import DiNATBlock, expand_dilations

from conftest import perturb_, small_model


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one thread, no kernel warning




def conv_out(n):
    return (n + 1) // 2  # 3x3, stride 2, padding 1


# ----------------------------------------------------------------------------------------------
# README example (literal; keep identical to the README's "Feature extraction" section)
# ----------------------------------------------------------------------------------------------
def test_readme_feature_extraction_example():
    import torch
    from dinat_backbone import DiNAT

    model = DiNAT(arch="mini", dilations="in1k-224", out_indices=(0, 1, 2, 3)).eval()
    # model = DiNAT(arch="mini", dilations="in1k-224",
    #               init_cfg=dict(type="Pretrained", checkpoint="https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth"))
    # model.init_weights()  # loads and converts the ImageNet checkpoint (drops its classifier)
    with torch.no_grad():
        features = model(torch.randn(1, 3, 224, 320))
    for f in features:
        print(tuple(f.shape))  # (1, 64, 56, 80) (1, 128, 28, 40) (1, 256, 14, 20) (1, 512, 7, 10)

    assert [tuple(f.shape) for f in features] == [(1, 64, 56, 80), (1, 128, 28, 40), (1, 256, 14, 20), (1, 512, 7, 10)]


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_arch_output_shapes_odd_size(arch):
    model = DiNAT(arch=arch, dilations="in1k-224").eval()
    s = ARCH_SETTINGS[arch]
    assert model.embed_dim == s["embed_dim"] and model.depths == s["depths"] and model.num_heads == s["num_heads"]
    assert (model.layer_scale is not None) == (arch == "base")
    h, w = 65, 97
    with torch.no_grad():
        outs = model(torch.randn(1, 3, h, w))
    assert len(outs) == 4
    h, w = conv_out(conv_out(h)), conv_out(conv_out(w))
    for i, out in enumerate(outs):
        assert out.shape == (1, s["embed_dim"] * 2 ** i, h, w)
        assert out.is_contiguous()
        assert model.out_strides[i] == 4 * 2 ** i
        assert math.ceil(65 / model.out_strides[i]) == h and math.ceil(97 / model.out_strides[i]) == w
        h, w = conv_out(h), conv_out(w)
    assert model.out_channels == [s["embed_dim"] * 2 ** i for i in range(4)]


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (45, 32), (61, 35)])
def test_any_input_size_at_least_32_works(size):
    model = perturb_(small_model(dilations=expand_dilations("coco", (2, 2, 2, 2)))).eval()
    assert model.dilations == [[1, 28], [1, 7], [1, 3], [1, 3]]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    h, w = size
    for i, out in enumerate(outs):
        h, w = (conv_out(conv_out(h)), conv_out(conv_out(w))) if i == 0 else (conv_out(h), conv_out(w))
        assert out.shape == (1, 16 * 2 ** i, h, w)
        assert torch.isfinite(out).all()


def test_out_features_and_out_indices():
    model = small_model(out_features=["stage3", "stem", "stage1"]).eval()
    assert model.out_features == ["stem", "stage1", "stage3"]
    assert model.out_indices == (0, 2)
    assert model.out_channels == [16, 16, 64] and model.out_strides == [4, 4, 16]
    assert hasattr(model, "norm_stem") and hasattr(model, "norm2") and not hasattr(model, "norm1")
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 16, 16), (1, 16, 16, 16), (1, 64, 4, 4)]

    model = small_model(out_indices=(1, 3)).eval()
    assert model.out_features == ["stage2", "stage4"]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 8), (1, 128, 2, 2)]
    with pytest.raises(ValueError, match="out_features"):
        small_model(out_features=["stage5"])
    with pytest.raises(ValueError, match="out_indices"):
        small_model(out_indices=(4,))


def test_outputs_match_a_manual_forward():
    """The forward is the original one: tokenizer, blocks, norm{i} of the stage output, downsample."""
    model = perturb_(small_model()).eval()
    x = torch.randn(2, 3, 41, 57)
    with torch.no_grad():
        outs = model(x)
        y = model.patch_embed.norm(model.patch_embed.proj(x).permute(0, 2, 3, 1))
        for i, level in enumerate(model.levels):
            for block in level.blocks:
                y = block(y)
            ref = getattr(model, f"norm{i}")(y).permute(0, 3, 1, 2)
            torch.testing.assert_close(outs[i], ref, rtol=1e-5, atol=1e-5)
            if level.downsample is not None:
                y = level.downsample.norm(level.downsample.reduction(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


# ----------------------------------------------------------------------------------------------
# Small-input padding
# ----------------------------------------------------------------------------------------------
def _block_direct(block, x):
    """Block output computed directly: pad the normalised map to kernel*dilation, brute-force
    attention on it (tests/reference.py), crop, then the residual MLP."""
    from reference import na2d_reference

    B, H, W, C = x.shape
    win = block.kernel_size * block.dilation
    attn = block.attn
    y = F.layer_norm(x, (C,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    y = F.pad(y, (0, 0, 0, max(0, win - W), 0, max(0, win - H)))
    Hp, Wp = y.shape[1:3]
    qkv = (y @ attn.qkv.weight.t() + attn.qkv.bias).view(B, Hp, Wp, 3, attn.num_heads, C // attn.num_heads)
    o = na2d_reference(qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2], block.kernel_size, block.dilation, attn.rpb)
    o = o.reshape(B, Hp, Wp, C)[:, :H, :W] @ attn.proj.weight.t() + attn.proj.bias
    x = x + block.gamma1 * o
    h = F.gelu(F.layer_norm(x, (C,), block.norm2.weight, block.norm2.bias, block.norm2.eps) @ block.mlp.fc1.weight.t()
               + block.mlp.fc1.bias)
    return x + block.gamma2 * (h @ block.mlp.fc2.weight.t() + block.mlp.fc2.bias)


@pytest.mark.parametrize("size,dilation", [((4, 6), 2), ((7, 3), 1), ((9, 11), 2), ((3, 12), 3)])
def test_small_input_padding_matches_direct_computation(size, dilation):
    torch.manual_seed(0)
    block = perturb_(DiNATBlock(8, 2, kernel_size=3, dilation=dilation, mlp_ratio=2.0, layer_scale=0.7), 0.2).eval()
    x = torch.randn(2, *size, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _block_direct(block, x), rtol=1e-5, atol=1e-5)


def test_small_input_error_mode_names_block_size_and_remedy():
    model = small_model(small_input="error").eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 160, 160))  # every map large enough: no error
        with pytest.raises(ValueError) as info:
            model(torch.randn(1, 3, 64, 96))  # stage-1 map 16x24 < 5 * 4 = 20 in block levels.0.blocks.1
    msg = str(info.value)
    assert "levels.0.blocks.1" in msg and "16x24" in msg and "small_input='pad'" in msg and "80 px" in msg
    with pytest.raises(ValueError, match="small_input"):
        small_model(small_input="crop")


# ----------------------------------------------------------------------------------------------
# Training features
# ----------------------------------------------------------------------------------------------
def test_frozen_stages_stay_frozen_after_train():
    torch.manual_seed(0)
    model = perturb_(small_model(frozen_stages=2, drop_rate=0.1,
                                   out_features=["stem", "stage1", "stage2", "stage3", "stage4"]))
    assert model.train() is model
    frozen = [model.patch_embed, model.norm_stem, model.levels[0], model.levels[1], model.norm0, model.norm1]
    trainable = [model.levels[2], model.levels[3], model.norm2, model.norm3]
    for m in frozen:
        assert not m.training and all(not mm.training for mm in m.modules())
        assert all(not p.requires_grad for p in m.parameters())
    for m in trainable:
        assert m.training and all(p.requires_grad for p in m.parameters())

    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    loss = sum(o.square().mean() for o in model(torch.randn(2, 3, 48, 48)))
    loss.backward()
    opt.step()
    after = model.state_dict()
    frozen_prefixes = ("patch_embed.", "norm_stem.", "levels.0.", "levels.1.", "norm0.", "norm1.")
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed != k.startswith(frozen_prefixes), k

    model = small_model(frozen_stages=0).train()
    assert all(not p.requires_grad for p in model.patch_embed.parameters())
    assert all(p.requires_grad for p in model.levels[0].parameters())


def test_with_cp_same_outputs_and_gradients():
    torch.manual_seed(0)
    ref = perturb_(small_model(drop_path_rate=0.2, layer_scale=0.5)).train()
    cp_model = small_model(drop_path_rate=0.2, layer_scale=0.5, with_cp=True).train()
    cp_model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 40, 44)
    outs = []
    for model in (ref, cp_model):
        torch.manual_seed(123)  # same drop-path draws
        out = model(x)
        sum((o * torch.linspace(0, 1, o.numel()).view_as(o)).sum() for o in out).backward()
        outs.append(out)
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    grads_ref = dict(ref.named_parameters())
    for name, p in cp_model.named_parameters():
        torch.testing.assert_close(p.grad, grads_ref[name].grad, rtol=1e-5, atol=1e-6, msg=name)


def test_drop_path_schedule_is_linear_over_all_blocks():
    model = small_model(drop_path_rate=0.7)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for level in model.levels for b in level.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.7, 8))


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
def test_dilation_presets_expand_to_stage_depths():
    mini, tiny = ARCH_SETTINGS["mini"]["depths"], ARCH_SETTINGS["tiny"]["depths"]
    assert expand_dilations("in1k-224", mini) == [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]
    assert expand_dilations("in1k-224", tiny)[2] == [1, 2] * 9
    assert expand_dilations("coco", tiny) == [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]]
    assert expand_dilations("coco", mini)[2] == [1, 3, 1, 5, 1, 7]
    assert expand_dilations("ade20k-512", tiny) == [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]]
    assert expand_dilations("ade20k-640", tiny) == DILATION_PRESETS["ade20k-640"]
    assert expand_dilations(None, (1, 2)) == [[1], [1, 1]]
    with torch.device("meta"):  # structure only: no memory, no init cost
        model = DiNAT(arch="large", dilations="ade20k-640")
    assert [[b.attn.dilation for b in level.blocks] for level in model.levels] == DILATION_PRESETS["ade20k-640"]


def test_dilation_errors():
    with pytest.raises(ValueError, match="depths"):
        small_model(dilations=[[1, 2], [1, 2], [1, 2], [1]])
    with pytest.raises(ValueError, match="preset"):
        small_model(dilations="imagenet")
    with pytest.raises(ValueError, match=">= 1"):
        small_model(dilations=[[1, 0], [1, 1], [1, 1], [1, 1]])
    with pytest.raises(ValueError, match="NAT"):
        NAT(arch="mini", dilations="in1k-224")
    nat = NAT(arch="mini")
    assert all(b.attn.dilation == 1 for level in nat.levels for b in level.blocks)


def test_out_indices_are_range_checked_before_wrapping():
    for bad in [(-5,), (-9, 1), (4,), (0, 7)]:
        with pytest.raises(ValueError, match=r"out_indices must be stage indices in 0\.\.3 \(or -4\.\.-1"):
            small_model(out_indices=bad)
    assert small_model(out_indices=(-1,)).out_indices == (3,)
    assert small_model(out_indices=(-4, -1, 1)).out_indices == (0, 1, 3)


@pytest.mark.parametrize("frozen", [5, -7, -2, 1.5, "1"])
def test_frozen_stages_outside_minus_one_to_four_is_an_error(frozen):
    with pytest.raises(ValueError, match=r"frozen_stages must be an integer in -1\.\.4"):
        small_model(frozen_stages=frozen)


@pytest.mark.parametrize("frozen", [-1, 0, 4])
def test_frozen_stages_accepted_range(frozen):
    model = small_model(frozen_stages=frozen).train()
    assert all(p.requires_grad == (frozen < 0) for p in model.patch_embed.parameters())
    assert all(p.requires_grad == (frozen < 4) for p in model.levels[3].parameters())


@pytest.mark.parametrize("dilations", [2, [1, 2, 1, 1], (1, 2), [[1, 2], 3, [1, 1], [1, 1]]])
def test_dilations_of_the_wrong_shape_say_what_is_needed(dilations):
    with pytest.raises(ValueError) as info:
        small_model(dilations=dilations)
    msg = str(info.value)
    assert "one list of per-block dilations per stage" in msg and "depths (2, 2, 2, 2)" in msg, msg
    assert "[[1, 2], [1, 2], [1, 2], [1, 2]]" in msg and "coco" in msg, msg


def test_unknown_argument_names_the_class_and_the_closest_argument():
    with pytest.raises(TypeError, match=r"^DiNAT: unknown argument\(s\) 'drop_path' \(did you mean 'drop_path_rate'"):
        DiNAT(arch="mini", drop_path=0.1)
    with pytest.raises(TypeError, match=r"^NAT: unknown argument\(s\) 'window_size'"):
        NAT(arch="mini", window_size=7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int64])
def test_image_of_another_dtype_says_to_cast_or_use_autocast(dtype):
    model = small_model().eval()
    x = (torch.rand(1, 3, 32, 32) * 255).to(dtype)
    with pytest.raises(TypeError) as info, torch.no_grad():
        model(x)
    msg = str(info.value)
    assert f"the image is {dtype}" in msg and "torch.float32" in msg and "x.to(torch.float32)" in msg, msg
    if dtype.is_floating_point:
        assert "torch.autocast('cpu'" in msg, msg


def test_low_precision_image_runs_under_autocast():
    model = small_model().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outs = model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16))
    assert all(torch.isfinite(o).all() for o in outs)


def test_arch_is_overridden_by_explicit_arguments():
    model = DiNAT(arch="base", depths=(1, 1, 1, 1), layer_scale=0, drop_path_rate=0.0)  # 0: no layer scale
    assert model.embed_dim == 128 and model.num_heads == (4, 8, 16, 32) and model.mlp_ratio == 2.0
    assert model.layer_scale is None and not hasattr(model.levels[0].blocks[0], "gamma1")
    # None (the default) takes the arch's value; without arch the unset arguments are mini's
    assert DiNAT(arch="base", depths=(1, 1, 1, 1), layer_scale=None).layer_scale == 1e-5
    assert DiNAT(arch="base", depths=(1, 1, 1, 1), layer_scale=0.5).levels[0].blocks[0].gamma1[0] == 0.5
    mini = DiNAT(embed_dim=32)
    assert mini.arch is None and mini.embed_dim == 32 and mini.depths == (3, 4, 6, 5) and mini.mlp_ratio == 3.0
    model = DiNAT(arch="small", embed_dim=64, depths=(1, 1, 1, 1), num_heads=(2, 4, 8, 16))
    assert model.embed_dim == 64 and model.mlp_ratio == 2.0
    assert model.levels[0].blocks[0].mlp.fc1.out_features == 128
    with pytest.raises(ValueError, match="arch"):
        DiNAT(arch="huge")


def test_state_dict_keys_are_the_original_ones():
    model = small_model(layer_scale=1e-5, out_indices=(0, 1, 2, 3))
    sd = model.state_dict()
    expected = {"patch_embed.proj.0.weight": (8, 3, 3, 3), "patch_embed.proj.0.bias": (8,),
                "patch_embed.proj.1.weight": (16, 8, 3, 3), "patch_embed.norm.weight": (16,),
                "levels.0.blocks.1.attn.qkv.weight": (48, 16), "levels.0.blocks.1.attn.rpb": (1, 9, 9),
                "levels.0.blocks.1.attn.proj.weight": (16, 16), "levels.0.blocks.1.norm1.weight": (16,),
                "levels.0.blocks.1.norm2.bias": (16,), "levels.0.blocks.1.mlp.fc1.weight": (32, 16),
                "levels.0.blocks.1.mlp.fc2.weight": (16, 32), "levels.0.blocks.1.gamma1": (16,),
                "levels.0.blocks.1.gamma2": (16,), "levels.2.downsample.reduction.weight": (128, 64, 3, 3),
                "levels.2.downsample.norm.weight": (128,), "norm3.weight": (128,), "norm0.bias": (16,)}
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "levels.2.downsample.reduction.bias" not in sd and "levels.3.downsample.reduction.weight" not in sd
    assert all(k.startswith(("patch_embed.", "levels.", "norm0.", "norm1.", "norm2.", "norm3.")) for k in sd)


def test_random_init_and_no_weight_decay():
    torch.manual_seed(0)
    model = DiNAT(arch="mini", depths=(2, 2, 2, 2))
    fc1 = model.levels[2].blocks[0].mlp.fc1
    assert abs(fc1.weight.std().item() - 0.02) < 0.003  # timm trunc_normal_: cut at +-2 (absolute), as the original
    assert torch.count_nonzero(fc1.bias) == 0
    rpb = torch.cat([b.attn.rpb.flatten() for level in model.levels for b in level.blocks])
    assert abs(rpb.std().item() - 0.02) < 0.004
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.count_nonzero(m.bias) == 0
    names = model.no_weight_decay()
    assert "levels.0.blocks.0.attn.rpb" in names and "norm0.weight" in names and "patch_embed.norm.bias" in names
    assert "levels.1.blocks.1.norm2.weight" in names and "levels.0.blocks.0.attn.qkv.weight" not in names
    assert {"rpb"} <= model.no_weight_decay_keywords()
    params = dict(model.named_parameters())
    assert names <= set(params)


def test_attn_backend_is_passed_to_every_attention(caplog):
    model = small_model(attn_backend="torch")
    assert all(b.attn.backend == "torch" for level in model.levels for b in level.blocks)
    with torch.no_grad(), caplog.at_level("DEBUG", logger="dinat_backbone.ops"):
        model.eval()(torch.randn(1, 3, 32, 32))
    ran = [r.getMessage().split()[2] for r in caplog.records if r.getMessage().startswith("na2d: ran")]
    assert len(ran) == sum(model.depths) and set(ran) == {"torch"}, ran


def _plain_block_forward(block, x, layer_scale):
    """The block's inference ops (the plain modules), with autograd."""
    y = block._attention(block.norm1(x))
    y = block.gamma1 * y if layer_scale else y
    h = x + y
    y = block.mlp(block.norm2(h))
    return h + (block.gamma2 * y if layer_scale else y)


def _lean_and_plain(block, x, layer_scale, autocast_dtype=None):
    results = []
    for lean in (True, False):
        block.zero_grad()
        x.grad = None
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = block.train()(x) if lean else _plain_block_forward(block, x, layer_scale)
        out.float().backward(torch.ones_like(out, dtype=torch.float32) + out.detach().float())
        results.append((out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in block.named_parameters()}))
    return results


@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_lean_training_path_matches_plain_autograd(layer_scale):
    """Training uses LayerNorm->Linear / GELU->Linear functions that save less for backward; they
    must give exactly the values and gradients of the plain module path."""
    from dinat_backbone.dinat import DiNATBlock

    torch.manual_seed(0)
    block = DiNATBlock(32, 2, kernel_size=3, dilation=2, layer_scale=layer_scale).double().train()
    x = torch.randn(2, 9, 11, 32, dtype=torch.float64, requires_grad=True)
    assert block._training()
    (o1, gx1, gp1), (o2, gx2, gp2) = _lean_and_plain(block, x, layer_scale)
    torch.testing.assert_close(o1, o2, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx1, gx2, rtol=0, atol=1e-10)
    for name in gp2:
        torch.testing.assert_close(gp1[name], gp2[name], rtol=0, atol=1e-10, msg=name)
    # the lean path is not used where it does not apply
    with torch.no_grad():
        assert not block._training()
    assert not block.eval()._training()


@pytest.mark.parametrize("dtype, x_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                              (torch.bfloat16, torch.bfloat16)])
def test_lean_training_path_under_autocast(dtype, x_dtype):
    """AMP training runs the lean path too (the only training path): under CPU autocast its output
    and every gradient match the plain modules' under the same autocast, within autocast's rounding
    (max error / max value <= 1e-2 for bfloat16's 8 mantissa bits, 2e-3 for float16). A bfloat16 x
    is the real model's residual stream under CPU bf16 autocast (the patch embedding's Linear/Conv
    output): CPU autocast runs layer_norm in x's dtype (it is on CUDA's float32 list, not CPU's), and
    so does the lean path (in the compiled kernel's LayerNorm there, within one rounding of ATen's:
    bit for bit on this project's EPYC, not promised on every CPU). (Without layer scale, as DiNAT-T:
    a float32 gamma would promote the residual stream, and norm2's input, to float32.)
    The LayerNorm weight / bias gradients of a bfloat16 x are the exception: ATen's CPU backward
    rounds them to bfloat16 (up to 3 % of the largest off here), the kernel's are float32-accurate
    (tests/test_layer_norm.py), so those compare within 5e-2."""
    from dinat_backbone.dinat import DiNATBlock

    tol = {torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    layer_scale = 0.5 if x_dtype == torch.float32 else None
    torch.manual_seed(0)
    block = perturb_(DiNATBlock(32, 2, kernel_size=3, dilation=2, layer_scale=layer_scale, attn_backend="torch"))
    x = torch.randn(2, 9, 11, 32).to(x_dtype).requires_grad_()
    (o1, gx1, gp1), (o2, gx2, gp2) = _lean_and_plain(block, x, layer_scale, dtype)
    assert o1.dtype == o2.dtype and all(gp1[n].dtype == gp2[n].dtype == torch.float32 for n in gp2)
    assert gx1.dtype == gx2.dtype == x_dtype

    def rel(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()

    assert rel(o1, o2) <= tol and rel(gx1, gx2) <= tol
    for name in gp2:
        bf16_norm_param = x_dtype == torch.bfloat16 and name.startswith("norm")
        assert rel(gp1[name], gp2[name]) <= (5e-2 if bf16_norm_param else tol), (name, rel(gp1[name], gp2[name]))
    if x_dtype != torch.float32:
        assert o1.dtype == x_dtype


def test_random_init_happens_once():
    """Weights are initialised at construction; init_weights() (without a checkpoint) keeps them."""
    torch.manual_seed(0)
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.device("meta"):
        lazy = small_model()
    lazy = lazy.to_empty(device="cpu")
    lazy.init_weights()  # built on the meta device: initialised here
    fc1 = lazy.levels[0].blocks[0].mlp.fc1
    assert torch.count_nonzero(fc1.bias) == 0 and 0.01 < fc1.weight.std().item() < 0.03


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_size=7.0), r"DiNAT: kernel_size must be an integer >= 3, got 7.0 \(float\)"),
    (dict(embed_dim=64.0), r"DiNAT: embed_dim must be an integer >= 1, got 64.0"),
    (dict(num_heads=(2, 4, 8, 0)), r"DiNAT: num_heads entries must be an integer >= 1, got 0"),
    (dict(depths=(2, 2, 2.5, 2)), r"DiNAT: depths entries must be an integer >= 0, got 2.5"),
    (dict(in_channels=3.0), r"DiNAT: in_channels must be an integer >= 1, got 3.0"),
])
def test_integer_arguments_are_checked(kwargs, match):
    """Arguments that size the model are integers: a float (7.0) or zero heads is a clear ValueError,
    not a TypeError / ZeroDivisionError from deep inside."""
    with pytest.raises(ValueError, match=match):
        DiNAT(**kwargs)
