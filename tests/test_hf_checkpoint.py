"""OneFormer's DiNAT backbones into this package's DiNAT: the authors' detectron2 files
(``oneformer_{coco,ade20k,cityscapes}_dinat_large*.pth``, backbone keys as the Mask2Former ones) and
the HF hub's ``shi-labs/oneformer_*_dinat_large`` layout, the latter from a real (tiny) transformers
OneFormer running through dinat_backbone.hf."""
from collections import OrderedDict

import pytest
import torch

import dinat_backbone.hf as hf
from dinat_backbone import DiNAT, convert_checkpoint, load_pretrained

from conftest import perturb_
from test_checkpoint import assert_same_outputs, make_model

pytestmark = pytest.mark.usefixtures("single_thread")


def detectron2_oneformer_checkpoint(backbone: torch.nn.Module) -> dict:
    """A OneFormer model as detectron2's ``DetectionCheckpointer`` saves it (the authors' files):
    ``OneFormer.backbone`` (D2DiNAT, the native keys with norm0..3), ``sem_seg_head`` (pixel decoder
    + the task-conditioned transformer decoder), the task MLP, the text encoder / projector and
    prompt context of the contrastive loss, the criterion's buffer, the pixel normalisation."""
    g = torch.Generator().manual_seed(4)
    model = OrderedDict(("backbone." + k, v.clone()) for k, v in backbone.state_dict().items())
    c = backbone.num_features
    model.update({
        "sem_seg_head.pixel_decoder.input_proj.0.0.weight": torch.randn(8, c[-1], 1, 1, generator=g),
        "sem_seg_head.pixel_decoder.transformer.level_embed": torch.randn(3, 8, generator=g),
        "sem_seg_head.predictor.class_transformer.decoder.layers.0.linear1.weight": torch.randn(16, 8, generator=g),
        "sem_seg_head.predictor.query_embed.weight": torch.randn(250, 8, generator=g),
        "sem_seg_head.predictor.class_embed.weight": torch.randn(134, 8, generator=g),
        "task_mlp.layers.0.weight": torch.randn(8, 8, generator=g),
        "text_encoder.transformer.resblocks.0.attn.in_proj_weight": torch.randn(24, 8, generator=g),
        "text_encoder.token_embedding.weight": torch.randn(100, 8, generator=g),
        "text_projector.layers.0.weight": torch.randn(8, 8, generator=g),
        "prompt_ctx.weight": torch.randn(16, 8, generator=g),
        "criterion.empty_weight": torch.ones(134),
        "pixel_mean": torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1),
        "pixel_std": torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1),
    })
    return {"model": model, "__author__": "SHI-Labs", "iteration": 89999}


@pytest.mark.parametrize("name", ["oneformer_coco_dinat_large_bs16_100ep.pth",
                                  "oneformer_ade20k_dinat_large_bs16_160k_1280x1280.pth"])
def test_detectron2_oneformer_checkpoint_loads_the_backbone(tmp_path, name):
    src = make_model(seed=0)
    path = tmp_path / name
    torch.save(detectron2_oneformer_checkpoint(src), path)
    converted = convert_checkpoint(torch.load(path, weights_only=True))
    assert set(converted) == set(src.state_dict())  # heads, text encoder, criterion, pixel mean / std left out
    dst = make_model(seed=1)
    result = load_pretrained(dst, str(path), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_outputs(src, dst, torch.randn(1, 3, 48, 56))
    dst = make_model(seed=1, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    dst.init_weights()
    assert_same_outputs(src, dst.eval(), torch.randn(1, 3, 40, 40))


@pytest.fixture(scope="module")
def tiny_oneformer():
    """A real transformers OneFormer on a DinatConfig backbone (tiny widths), through the bridge."""
    hf.enable()
    from transformers import DinatConfig, OneFormerConfig, OneFormerForUniversalSegmentation

    backbone = DinatConfig(embed_dim=16, depths=[2, 1, 1, 1], num_heads=[1, 2, 2, 4], kernel_size=5,
                           dilations=[[1, 4], [3], [2], [1]], mlp_ratio=2.0, drop_path_rate=0.0,
                           out_features=["stage1", "stage2", "stage3", "stage4"])
    config = OneFormerConfig(backbone_config=backbone, conv_dim=32, mask_dim=32, hidden_dim=32,
                             encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
                             query_dec_layers=1, num_attention_heads=2, num_queries=6, task_seq_len=8,
                             text_encoder_width=32, text_encoder_num_layers=1, text_encoder_vocab_size=100,
                             text_encoder_context_length=8, text_encoder_n_ctx=2, train_num_points=64, num_labels=3)
    torch.manual_seed(8)
    yield OneFormerForUniversalSegmentation(config)
    hf.disable()


def test_hf_oneformer_forward_loss_backward_and_backbone_into_dinat(tiny_oneformer, tmp_path):
    import safetensors.torch

    model = perturb_(tiny_oneformer, seed=9)
    x = torch.randn(2, 3, 64, 64)
    task = torch.randint(0, 100, (2, 8))
    masks = [torch.zeros(2, 64, 64) for _ in range(2)]
    for m in masks:
        m[0, :32], m[1, 32:] = 1, 1
    model.train()
    out = model(pixel_values=x, task_inputs=task, mask_labels=masks,
                class_labels=[torch.tensor([0, 2]), torch.tensor([1, 2])])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    encoder = model.model.pixel_level_module.encoder
    assert type(encoder).__name__ == "DinatBackbone"
    assert encoder.encoder.levels[0].layers[0].attention.self.rpb.grad.abs().sum() > 0

    # the hub files' layout: model.safetensors of OneFormerForUniversalSegmentation
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    native = DiNAT(embed_dim=16, depths=(2, 1, 1, 1), num_heads=(1, 2, 2, 4), mlp_ratio=2.0, kernel_size=5,
                   dilations=[[1, 4], [3], [2], [1]], drop_path_rate=0.0)
    result = load_pretrained(native, str(path), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    encoder.eval()
    native.eval()
    with torch.no_grad():
        for a, b in zip(encoder(x).feature_maps, native(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
