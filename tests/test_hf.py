"""dinat_backbone.hf: transformers' own DiNAT models (the installed release, real transformers code)
running on this package's op, against this package's DiNAT on the same weights, the pure-PyTorch
backend, and the float64 neighbourhood-attention reference; saving, loading and pipelines from a
local folder; Mask2Former and UperNet built on a DinatConfig backbone."""
import copy
import logging
import os
import subprocess
import sys

import pytest
import torch

import dinat_backbone.hf as hf
from dinat_backbone import DiNAT, convert_checkpoint

from helpers import tiny_dinat_config
from conftest import perturb_
from reference import neighbour_tables

pytestmark = pytest.mark.usefixtures("single_thread")

DEPTHS = (2, 1, 1, 1)
HEADS = (1, 2, 2, 4)
DILATIONS = [[1, 4], [3], [2], [1]]
SIZES = {"needs-padding": (37, 45), "no-padding": (160, 224)}
STAGES = ["stem", "stage1", "stage2", "stage3", "stage4"]


@pytest.fixture(scope="module")
def md():
    status = hf.enable()
    import transformers.models.dinat.modeling_dinat as module

    assert status.runs == "dinat_backbone"
    yield module
    hf.disable()


def hf_config(md, **kwargs):
    return tiny_dinat_config(md, DEPTHS, HEADS, DILATIONS, **kwargs)


def native_model(**kwargs):
    return DiNAT(embed_dim=16, depths=DEPTHS, num_heads=HEADS, mlp_ratio=2.0, kernel_size=5, dilations=DILATIONS,
                 layer_scale=0.5, drop_path_rate=0.0, **kwargs)


def stage_outputs(model, x):
    """DiNAT's per-stage outputs before downsampling and before its output norms, NCHW (what
    transformers calls the hidden states before downsampling), after the stem."""
    y = model.patch_embed(x)
    outs = [y.permute(0, 3, 1, 2)]
    for level in model.levels:
        stage, y = level(y)
        outs.append(stage.permute(0, 3, 1, 2))
    return outs


def test_import_dinat_backbone_does_not_import_transformers():
    code = ("import sys, dinat_backbone, dinat_backbone.ops, dinat_backbone.hf; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))


def test_enable_is_idempotent_and_says_what_runs(md, caplog):
    import transformers

    with caplog.at_level(logging.INFO, logger="dinat_backbone.hf"):
        status = hf.enable()
    assert status == hf.status() and status.runs == "dinat_backbone" and status.forward_replaced
    assert status.transformers_version == transformers.__version__ and status.natten_version is None
    assert f"dinat_backbone runs transformers {transformers.__version__}'s DiNAT" in str(status)
    assert str(status) in caplog.text
    from dinat_backbone.ops import natten2dav, natten2dqkrpb

    assert md.natten2dqkrpb is natten2dqkrpb and md.natten2dav is natten2dav
    md.requires_backends(object(), ["natten"])  # no longer refuses
    md.requires_backends(object(), ["torch", "natten"])
    with pytest.raises(KeyError):  # the other backends still go to transformers' own check
        md.requires_backends(object(), ["natten", "no-such-backend"])


def test_disable_restores_transformers_module(md):
    forward = md.NeighborhoodAttention.forward
    mlp_forwards = (md.DinatIntermediate.forward, md.DinatOutput.forward)
    hf.disable()
    try:
        assert md.NeighborhoodAttention.forward is not forward and hf.status() is None
        assert md.DinatIntermediate.forward is not mlp_forwards[0] and md.DinatOutput.forward is not mlp_forwards[1]
        with pytest.raises(ImportError, match="natten"):  # transformers' own refusal without natten
            md.DinatModel(hf_config(md))
    finally:
        hf.enable()
    md.DinatModel(hf_config(md))


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
def test_dinat_backbone_matches_native_model_forward_and_backward(md, size):
    x = torch.randn(2, 3, *SIZES[size])
    ref_model = perturb_(md.DinatBackbone(hf_config(md, out_features=STAGES)), seed=0).eval()
    model = native_model(out_features=STAGES).eval()
    model.load_state_dict(convert_checkpoint(ref_model.state_dict()), strict=True)
    weights = [torch.randn_like(f) for f in model(x)]

    def run(m):
        xg = x.clone().requires_grad_()
        maps = m(xg).feature_maps if m is ref_model else m(xg)
        sum((f * w).sum() for f, w in zip(maps, weights)).backward()
        return maps, xg.grad

    hf_maps, hf_dx = run(ref_model)
    maps, dx = run(model)
    assert len(hf_maps) == len(maps) == 5
    for a, b in zip(hf_maps, maps):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(hf_dx, dx, rtol=0, atol=1e-5)
    for hf_name, name in [("encoder.levels.0.layers.1.attention.self.rpb", "levels.0.blocks.1.attn.rpb"),
                          ("encoder.levels.2.layers.0.attention.self.rpb", "levels.2.blocks.0.attn.rpb")]:
        torch.testing.assert_close(ref_model.get_parameter(hf_name).grad, model.get_parameter(name).grad,
                                   rtol=0, atol=1e-5)
    q_grad = ref_model.get_parameter("encoder.levels.1.layers.0.attention.self.query.weight").grad
    torch.testing.assert_close(q_grad, model.get_parameter("levels.1.blocks.0.attn.qkv.weight").grad[:32],
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls", ["DinatModel", "DinatForImageClassification"])
def test_classification_models_match_native_stages_and_pure_pytorch_path(md, cls, monkeypatch):
    ref_model = perturb_(getattr(md, cls)(hf_config(md, num_labels=5)), seed=1).eval()
    inner = ref_model if cls == "DinatModel" else ref_model.dinat
    model = native_model()
    result = model.load_state_dict(convert_checkpoint(ref_model.state_dict()), strict=False)
    assert sorted(result.missing_keys) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    model.eval()
    x = torch.randn(2, 3, *SIZES["needs-padding"])
    with torch.no_grad():
        out = ref_model(x, output_hidden_states=True)
        assert len(out.reshaped_hidden_states) == 5
        native = stage_outputs(model, x)
        hidden = inner.encoder(inner.embeddings(x), output_hidden_states=True,
                               output_hidden_states_before_downsampling=True).reshaped_hidden_states
    for a, b in zip(hidden, native):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    final = inner.layernorm(native[-1].permute(0, 2, 3, 1))
    torch.testing.assert_close(inner(x).last_hidden_state, final, rtol=0, atol=1e-5)

    def logits_and_grads():
        xg = x.clone().requires_grad_()
        result = ref_model(xg)
        y = result.logits if cls != "DinatModel" else result.pooler_output
        y.pow(2).sum().backward()
        grads = [p.grad.clone() for p in ref_model.parameters()]
        ref_model.zero_grad()
        return y.detach(), xg.grad, grads

    y, dx, grads = logits_and_grads()  # the compiled kernel
    monkeypatch.setenv("DINAT_NA_BACKEND", "torch")  # the pure-PyTorch backend
    y_ref, dx_ref, grads_ref = logits_and_grads()
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(dx, dx_ref, rtol=0, atol=1e-5)
    for (name, _), g, g_ref in zip(ref_model.named_parameters(), grads, grads_ref):
        # float32 sums over every pixel (the stem's convolutions): within 1e-5 of the tensor's largest entry
        assert (g - g_ref).abs().max() <= 1e-5 * max(1.0, g_ref.abs().max().item()), name


def reference_weights(attention, hidden_states):
    """float64 softmax(q.k / sqrt(d) + rpb) over each query's neighbourhood, from tests/reference's
    neighbour tables (not the package's geometry): ``[batch, heads, X, Y, K*K]``."""
    B, X, Y, _ = hidden_states.shape
    heads, d, K, dil = attention.num_attention_heads, attention.attention_head_size, attention.kernel_size, \
        attention.dilation
    h = hidden_states.double()
    q, k = (torch.nn.functional.linear(h, lin.weight.double(), lin.bias.double()).view(B, X, Y, heads, d)
            for lin in (attention.query, attention.key))
    ky, ry = neighbour_tables(X, K, dil)
    kx, rx = neighbour_tables(Y, K, dil)
    kn = k[:, ky[:, :, None, None], kx[None, None, :, :]]  # [B, X, K, Y, K, heads, d]
    logits = torch.einsum("bxyhd,bxaythd->bhxyat", q, kn) / d ** 0.5
    logits = logits + attention.rpb.double()[:, ry[:, None, :, None], rx[None, :, None, :]]
    return logits.flatten(-2).softmax(-1)


def test_output_attentions_are_the_reference_softmax_and_fused_op_runs_otherwise(md, caplog):
    model = perturb_(md.DinatModel(hf_config(md)), seed=2).eval()
    captured = {}
    layers = [level.layers[-1].attention.self for level in model.encoder.levels]
    handles = [m.register_forward_hook(lambda mod, args, out, i=i: captured.__setitem__(i, args[0]))
               for i, m in enumerate(layers)]
    x = torch.randn(1, 3, *SIZES["needs-padding"])
    with torch.no_grad(), caplog.at_level(logging.DEBUG, logger="dinat_backbone.ops"):
        fused = model(x)
        assert caplog.text.count("na2d: ran") == sum(DEPTHS)  # every attention through the fused op
        caplog.clear()
        split = model(x, output_attentions=True)
        assert "na2d: ran" not in caplog.text  # only the split ops when the weights are requested
    for h in handles:
        h.remove()
    torch.testing.assert_close(split.last_hidden_state, fused.last_hidden_state, rtol=0, atol=1e-5)
    assert len(split.attentions) == 4
    for i, (attn, layer) in enumerate(zip(split.attentions, layers)):
        # stage 1's 10x12 map is padded to kernel_size * dilation = 20 by DinatLayer.maybe_pad
        assert attn.shape[:2] == (1, HEADS[i]) and attn.shape[-1] == 25
        torch.testing.assert_close(attn.double(), reference_weights(layer, captured[i]), rtol=0, atol=1e-6)
    assert split.attentions[0].shape[2:4] == (20, 20)


def test_attention_dropout_in_training_runs_and_is_off_in_eval(md):
    model = perturb_(md.DinatBackbone(hf_config(md, attention_probs_dropout_prob=0.5, out_features=["stage4"])),
                     seed=3)
    x = torch.randn(1, 3, 64, 64)
    model.train()
    a, b = model(x).feature_maps[0], model(x).feature_maps[0]
    assert not torch.allclose(a, b)
    a.sum().backward()
    assert model.encoder.levels[0].layers[0].attention.self.rpb.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).feature_maps[0], model(x).feature_maps[0], rtol=0, atol=0)


def test_autocast_bfloat16_forward_backward(md):
    model = perturb_(md.DinatBackbone(hf_config(md, out_features=["stage1", "stage4"])), seed=4)
    x = torch.randn(1, 3, 64, 72)
    with torch.no_grad():
        ref = model(x).feature_maps
    for output_attentions in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, output_attentions=output_attentions)
        out.feature_maps[-1].float().sum().backward()
        for a, b in zip(out.feature_maps, ref):
            assert (a.float() - b).abs().max() < 0.1 * b.abs().max()
        assert torch.isfinite(model.encoder.levels[0].layers[0].attention.self.rpb.grad).all()
        model.zero_grad()


def image(size=(50, 60), seed=0):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=g).numpy())


def test_image_classifier_save_load_pipeline_and_training_step(md, tmp_path):
    from transformers import AutoModelForImageClassification, ViTImageProcessor, pipeline

    labels = {0: "circle", 1: "square", 2: "triangle"}
    model = perturb_(md.DinatForImageClassification(hf_config(md, id2label=labels,
                                                              label2id={v: k for k, v in labels.items()})), seed=5)
    processor = ViTImageProcessor(size={"height": 64, "width": 64})
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "DinatForImageClassification"
    x = processor(image(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model.eval()(x).logits, rtol=0, atol=1e-6)
    predictions = pipeline("image-classification", model=str(tmp_path), device="cpu")(image())
    assert {p["label"] for p in predictions} == set(labels.values())
    assert abs(sum(p["score"] for p in predictions) - 1) < 1e-4
    # a training step: loss, backward, optimiser step changes the prediction
    loaded.train()
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.1)
    batch = torch.cat([x, processor(image(seed=1), return_tensors="pt")["pixel_values"]])
    target = torch.tensor([2, 2])
    loss = loaded(batch, labels=target).loss
    loss.backward()
    assert loaded.dinat.encoder.levels[0].layers[0].attention.self.rpb.grad.abs().sum() > 0
    optimizer.step()
    assert loaded(batch, labels=target).loss < loss


def test_mask2former_with_dinat_backbone_loss_backward_save_load_pipeline(md, tmp_path):
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor,
                              pipeline)

    backbone = hf_config(md, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
                               num_attention_heads=2, num_queries=5, train_num_points=64, num_labels=3,
                               id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    torch.manual_seed(6)
    model = Mask2FormerForUniversalSegmentation(config)
    assert type(model.model.pixel_level_module.encoder).__name__ == "DinatBackbone"
    x = torch.randn(2, 3, 64, 64)
    masks = [torch.zeros(2, 64, 64) for _ in range(2)]
    for m in masks:
        m[0, :32], m[1, 32:] = 1, 1
    out = model(pixel_values=x, mask_labels=masks, class_labels=[torch.tensor([0, 2]), torch.tensor([1, 2])])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    rpb = model.model.pixel_level_module.encoder.encoder.levels[0].layers[0].attention.self.rpb
    assert rpb.grad is not None and rpb.grad.abs().sum() > 0

    model.eval().save_pretrained(tmp_path)
    Mask2FormerImageProcessor(size={"height": 64, "width": 64}, do_resize=True).save_pretrained(tmp_path)
    loaded = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).masks_queries_logits,
                                   model(pixel_values=x).masks_queries_logits, rtol=0, atol=1e-5)
    segments = pipeline("image-segmentation", model=str(tmp_path), device="cpu")(image((64, 64)), subtask="semantic")
    assert segments and all(s["label"] in {"a", "b", "c"} and s["mask"].size == (64, 64) for s in segments)


def test_upernet_with_dinat_backbone_loss_backward(md, tmp_path):
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    backbone = hf_config(md, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, hidden_size=32, auxiliary_in_channels=64,
                           auxiliary_channels=16, num_labels=4)
    torch.manual_seed(7)
    model = UperNetForSemanticSegmentation(config)
    x = torch.randn(2, 3, 96, 80)
    out = model(pixel_values=x, labels=torch.randint(0, 4, (2, 96, 80)))
    assert out.logits.shape == (2, 4, 96, 80) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.backbone.encoder.levels[3].layers[0].attention.self.rpb.grad.abs().sum() > 0
    model.eval().save_pretrained(tmp_path)
    loaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, model(pixel_values=x).logits, rtol=0, atol=1e-5)


def test_wrapped_or_hooked_projections_run_as_modules(md):
    """One GEMM for query / key / value only while they are plain Linears: a forward hook (as PEFT /
    LoRA wrappers and quantised layers change them) is honoured, in both paths."""
    model = perturb_(md.DinatBackbone(hf_config(md, out_features=["stage2"])), seed=10).eval()
    zeroed = copy.deepcopy(model)
    attention = model.encoder.levels[0].layers[0].attention.self
    with torch.no_grad():
        zeroed.encoder.levels[0].layers[0].attention.self.value.weight.zero_()
        zeroed.encoder.levels[0].layers[0].attention.self.value.bias.zero_()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x).feature_maps[0]
        handle = attention.value.register_forward_hook(lambda module, args, out: out * 0)
        for output_attentions in (False, True):
            hooked = model(x, output_attentions=output_attentions).feature_maps[0]
            torch.testing.assert_close(hooked, zeroed(x).feature_maps[0], rtol=0, atol=1e-6)
            assert not torch.allclose(hooked, plain)
        handle.remove()
        torch.testing.assert_close(model(x).feature_maps[0], plain, rtol=0, atol=0)


def test_inference_linears_run_fused_like_the_native_model(md):
    """CPU inference: the qkv GEMM, DinatIntermediate's dense + GELU and DinatOutput's dense on
    oneDNN's fused Linear (three calls per layer, as the native block's qkv / fc1 / fc2), the same
    feature maps as with the switch off; a hook on the intermediate's activation gets the modules."""
    from torch.profiler import profile

    from dinat_backbone import fused_linear

    model = perturb_(md.DinatBackbone(hf_config(md)), seed=11).eval()
    x = torch.randn(1, 3, 64, 64)

    def onednn_calls():
        with profile() as prof:
            out = model(x).feature_maps
        return sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise"), out

    with torch.no_grad():
        calls, fused = onednn_calls()
        assert calls == 3 * sum(DEPTHS)
        fused_linear.set_fused_linear(False)
        try:
            plain = model(x).feature_maps
        finally:
            fused_linear.set_fused_linear(True)
        for a, b in zip(fused, plain):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        intermediate = model.encoder.levels[0].layers[0].intermediate
        seen = []
        handle = intermediate.intermediate_act_fn.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            assert onednn_calls()[0] == 3 * sum(DEPTHS) - 1 and len(seen) == 1
        finally:
            handle.remove()


@pytest.mark.cuda
def test_bridge_on_cuda_matches_cpu_forward_backward_and_autocast(md):
    """On a GPU the fused path runs na2d's CUDA backend (Triton), the split path the split ops."""
    model = perturb_(md.DinatBackbone(hf_config(md, out_features=STAGES)), seed=11).eval()
    x = torch.randn(2, 3, *SIZES["needs-padding"])
    with torch.no_grad():
        cpu_maps = model(x).feature_maps
    gpu = copy.deepcopy(model).cuda()
    xg = x.cuda().requires_grad_()
    with torch.no_grad():
        for output_attentions in (False, True):
            for a, b in zip(gpu(xg, output_attentions=output_attentions).feature_maps, cpu_maps):
                torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-3)  # TF32 matmuls allowed
    sum(m.sum() for m in gpu(xg).feature_maps).backward()
    assert torch.isfinite(xg.grad).all()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        maps = gpu(xg).feature_maps
    assert all(torch.isfinite(m).all() for m in maps)
    sum(m.float().sum() for m in maps).backward()
    assert torch.isfinite(gpu.encoder.levels[0].layers[0].attention.self.rpb.grad).all()


def test_missing_transformers_is_an_error_naming_the_install():
    # a None entry in sys.modules is Python's own way of making an import fail (as for an uninstalled package)
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import dinat_backbone.hf as hf\n"
            "try:\n    hf.enable()\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd())).stdout
    assert "dinat_backbone.hf needs HF transformers, which is not installed: pip install transformers==" in out


@pytest.mark.parametrize("change", ["no maybe_pad", "forward signature", "no natten2dav"])
def test_unknown_modeling_dinat_layout_is_an_error_naming_it(md, monkeypatch, change):
    hf.disable()
    try:
        if change == "no maybe_pad":
            monkeypatch.delattr(md.DinatLayer, "maybe_pad")
        elif change == "forward signature":
            monkeypatch.setattr(md.NeighborhoodAttention, "forward", lambda self, hidden_states, **kwargs: None)
        else:
            monkeypatch.delattr(md, "natten2dav")
        with pytest.raises(RuntimeError, match=r"is not a layout this bridge knows \(.*\); it was written for "
                                               r"transformers 4\.46\.3 / 5\.24\.0: pip install transformers=="):
            hf.enable()
        assert hf.status() is None
    finally:
        monkeypatch.undo()
        hf.enable()
