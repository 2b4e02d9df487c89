"""DiNAT_s: the Swin-layout Dilated Neighborhood Attention Transformer (Hassani & Shi 2022).

Swin Transformer with window attention replaced by neighbourhood attention and shifted-window
attention by dilated neighbourhood attention: Swin's patch embedding and patch merging around
the same blocks as :class:`dinat_backbone.dinat.DiNAT` (mlp_ratio 4, no layer scale). The
module tree (and therefore every ``state_dict`` key) is the one of SHI-Labs' ``detection/dinats.py``
/ ``segmentation/dinats.py``, so their checkpoints load without renaming::

    patch_embed.proj              Conv 4x4 stride 4 (in -> C); the input is zero-padded to a multiple of 4
    patch_embed.norm              LayerNorm
    layers.i.blocks.j.{norm1, attn.qkv, attn.rpb, attn.proj, norm2, mlp.fc1, mlp.fc2}
    layers.i.downsample.{norm, reduction}   (i < 3) Swin patch merging: 2x2 neighbours concatenated,
                                  LayerNorm(4C), Linear 4C -> 2C without bias (odd sizes zero-padded)
    norm{i}                       LayerNorm of output i

The ImageNet classifiers (``classification/dinats.py``) have the same backbone keys plus a final
``norm`` and ``head``, which :func:`dinat_backbone.checkpoint.convert_checkpoint` drops.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dinat import DiNATBackboneBase
from .fused_norm import layer_norm

__all__ = ["DiNAT_s", "PatchEmbed", "PatchMerging", "ARCH_SETTINGS", "DILATION_PRESETS"]

#: Variant table (the authors' detection / segmentation configs): embed_dim, depths, num_heads,
#: mlp_ratio, layer_scale. Swin's sizes; there is no 'mini'.
ARCH_SETTINGS: Dict[str, dict] = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), mlp_ratio=4.0, layer_scale=None),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), mlp_ratio=4.0, layer_scale=None),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), mlp_ratio=4.0, layer_scale=None),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), mlp_ratio=4.0, layer_scale=None),
}

#: Per-stage dilation patterns of the published DiNAT_s models, cycled to the stage depth (stage 3
#: of tiny has depth 6, of the others 18). From the authors' configs: 'in1k-224' / 'in1k-384'
#: (ImageNet classifiers at 224 / 384, ``classification/dinats.py``), 'coco' (every COCO detector),
#: 'ade20k-512' (UPerNet tiny / small / base) and 'ade20k-640' (UPerNet large).
DILATION_PRESETS: Dict[str, List[List[int]]] = {
    "in1k-224": [[1, 8], [1, 4], [1, 2], [1, 1]],
    "in1k-384": [[1, 13], [1, 6], [1, 3], [1, 1]],
    "coco": [[1, 28], [1, 14], [1, 3, 1, 5, 1, 7], [1, 3]],
    "ade20k-512": [[1, 16], [1, 8], [1, 2, 1, 3, 1, 4], [1, 2]],
    "ade20k-640": [[1, 20], [1, 10], [1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5], [1, 2]],
}


def _pad_to_multiple(size, multiple: int):
    """Padding that brings ``size`` up to a multiple of ``multiple``, written so that the padded
    size is ``multiple * ceil(size / multiple)`` also for a symbolic size under ``torch.export``
    (``-size % multiple`` is the same number, but the exporter cannot prove the padded size divisible)."""
    return multiple * ((size + multiple - 1) // multiple) - size


class PatchEmbed(nn.Module):
    """Swin's patch embedding: zero-pad the right / bottom to a multiple of ``patch_size``, a
    ``patch_size`` x ``patch_size`` convolution of the same stride (in -> C), LayerNorm; NCHW in,
    NHWC out."""

    def __init__(self, in_channels: int = 3, embed_dim: int = 96, norm_layer=nn.LayerNorm, patch_size: int = 4):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        p = self.patch_size
        # while tracing, pad unconditionally: a branch on the size would pin an exported graph to one size class
        if torch.compiler.is_compiling() or H % p or W % p:
            x = F.pad(x, (0, _pad_to_multiple(W, p), 0, _pad_to_multiple(H, p)))
        # channels_last convolution: the NHWC view of the result is then contiguous for free
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        return layer_norm(x.permute(0, 2, 3, 1), self.norm)


class PatchMerging(nn.Module):
    """Swin's patch merging on ``[B, H, W, C]``: zero-pad odd sizes, concatenate each 2x2
    neighbourhood as ``[x(0,0), x(1,0), x(0,1), x(1,1)]`` (row, column offsets; the original
    Swin order, not mmdet's ``nn.Unfold`` order), LayerNorm(4C), Linear 4C -> 2C without bias."""

    def __init__(self, dim: int, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1], x.shape[2]
        if torch.compiler.is_compiling() or H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, _pad_to_multiple(W, 2), 0, _pad_to_multiple(H, 2)))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(layer_norm(x, self.norm))


class DiNAT_s(DiNATBackboneBase):  # noqa: N801  (the authors' and the registries' name)
    """DiNAT_s backbone: the same arguments, behaviour and blocks as :class:`dinat_backbone.DiNAT`
    (see :class:`dinat_backbone.dinat.DiNATBackboneBase`) with Swin's tokenizer and downsampler.

    ``arch`` is a key of :data:`ARCH_SETTINGS` ('tiny', 'small', 'base', 'large'; without it the
    unset arguments are tiny's), ``dilations`` a per-stage list or a key of
    :data:`DILATION_PRESETS` ('in1k-224', 'in1k-384', 'coco', 'ade20k-512', 'ade20k-640').
    Outputs are NCHW maps of ``ceil(H / 4)``, ``ceil(H / 8)``, ... (the patch embedding and each
    merging pad odd sizes), with ``embed_dim * 2**i`` channels.
    """

    family = "DiNAT_s"
    arch_settings = ARCH_SETTINGS
    dilation_presets = DILATION_PRESETS
    default_arch = "tiny"
    stage_attr = "layers"
    tokenizer_cls = PatchEmbed
    downsampler_cls = PatchMerging
