"""Dilated Neighborhood Attention Transformer (DiNAT) and NAT as dense-prediction backbones.

DiNAT: https://arxiv.org/abs/2209.15001, NAT: https://arxiv.org/abs/2204.07143.

The module tree (and therefore every ``state_dict`` key) is the one of the original
SHI-Labs detection / segmentation backbone, so its checkpoints load without renaming::

    patch_embed.proj.{0,1}        Conv 3x3 s2 (in -> C/2), Conv 3x3 s2 (C/2 -> C), no activation
    patch_embed.norm              LayerNorm
    levels.i.blocks.j.{norm1, attn.qkv, attn.rpb, attn.proj, norm2, mlp.fc1, mlp.fc2[, gamma1, gamma2]}
    levels.i.downsample.{reduction, norm}   (i < 3) Conv 3x3 s2 C -> 2C without bias, LayerNorm
    norm{i}                       LayerNorm of output i (stage output before downsampling)
    norm_stem                     LayerNorm of the 'stem' output (only when requested; HF's
                                  ``hidden_states_norms.stem``)

Stages run channels-last (``[B, H, W, C]``); the tokenizer and the downsamplers run their
convolutions in ``torch.channels_last`` memory format, so going NCHW <-> NHWC around them is a
stride change and not a copy. Outputs are contiguous NCHW maps.

Other formats (original ImageNet models, HF transformers, detector checkpoints) are converted
by :mod:`dinat_backbone.checkpoint`.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from .fused_linear import linear, linear_gelu
from .fused_norm import add_layer_norm, layer_norm
from .lean import gelu_linear, layer_norm_linear
from .ops import NeighborhoodAttention2D, exporting
from .ops.inputs import require_int

__all__ = [
    "DiNAT",
    "NAT",
    "DiNATBackboneBase",
    "ARCH_SETTINGS",
    "DILATION_PRESETS",
    "expand_dilations",
    "ConvTokenizer",
    "ConvDownsampler",
    "Mlp",
    "DropPath",
    "DiNATBlock",
    "NATBlock",
    "DiNATLevel",
]

logger = logging.getLogger(__name__)

#: Variant table: embed_dim, depths, num_heads, mlp_ratio, layer_scale (as in the original repo).
ARCH_SETTINGS: Dict[str, dict] = {
    "mini": dict(embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0, layer_scale=None),
    "tiny": dict(embed_dim=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0, layer_scale=None),
    "small": dict(embed_dim=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2.0, layer_scale=None),
    "base": dict(embed_dim=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2.0, layer_scale=1e-5),
    "large": dict(embed_dim=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2.0, layer_scale=None),
}

#: Per-stage dilation patterns of the published models. Each pattern is repeated (and cut) to the
#: stage depth by :func:`expand_dilations`, e.g. 'in1k-224' stage 3 is [1, 2] * 3 for mini (depth 6)
#: and [1, 2] * 9 for the others (depth 18).
DILATION_PRESETS: Dict[str, List[List[int]]] = {
    "in1k-224": [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1, 1, 1, 1, 1]],
    "coco": [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]],
    "ade20k-512": [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]],
    "ade20k-640": [[1, 20, 1], [1, 5, 1, 10], [1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5], [1, 2, 1, 2, 1]],
    # DiNAT-L in the authors' Mask2Former runs (mask2former/configs/*/dinat/*.yaml: COCO, ADE20K and
    # Cityscapes alike), with kernel_size=11: an 11-wide window needs smaller dilations for the
    # same receptive field (stage 4 is not dilated at all)
    "mask2former-k11": [[1, 14, 1], [1, 4, 1, 7], [1, 2, 1, 3] * 4 + [1, 3], [1, 1, 1, 1, 1]],
}

#: Names accepted by ``out_features`` (HF ``BackboneMixin`` style), in network order.
FEATURE_NAMES = ("stem", "stage1", "stage2", "stage3", "stage4")


def _is_int(value) -> bool:
    try:
        return not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError):
        return False


def expand_dilations(dilations, depths: Sequence[int], presets: Optional[Dict[str, List[List[int]]]] = None,
                     family: str = "DiNAT") -> List[List[int]]:
    """Per-block dilations ``[[d, ...] per stage]`` from None (all 1), a preset name or a list.

    A preset's pattern (from ``presets``, default :data:`DILATION_PRESETS`) is cycled to each
    stage's depth; an explicit list must give one list per stage, as long as the stage's depth
    (ValueError otherwise). ``family`` names the model in the messages.
    """
    presets = DILATION_PRESETS if presets is None else presets
    depths = [int(d) for d in depths]
    if dilations is None:
        return [[1] * d for d in depths]
    if isinstance(dilations, str):
        if dilations not in presets:
            raise ValueError(
                f"{family}: unknown dilation preset {dilations!r}; choose one of {sorted(presets)} "
                "or pass a per-stage list of per-block dilations"
            )
        pattern = presets[dilations]
        if len(pattern) != len(depths):
            raise ValueError(f"{family}: preset {dilations!r} has {len(pattern)} stages but depths has {len(depths)}")
        return [[pattern[i][j % len(pattern[i])] for j in range(depth)] for i, depth in enumerate(depths)]
    if not isinstance(dilations, (list, tuple)) or not all(isinstance(stage, (list, tuple)) for stage in dilations):
        example = [[1, 2] * (d // 2) + [1] * (d % 2) for d in depths]
        raise ValueError(
            f"{family}: dilations must be None, a preset name ({', '.join(sorted(presets))}) or one list of "
            f"per-block dilations per stage (for depths {tuple(depths)} e.g. {example}), got {dilations!r}")
    dilations = [list(stage) for stage in dilations]
    lengths = [len(stage) for stage in dilations]
    if lengths != depths:
        raise ValueError(
            f"{family}: dilations have per-stage lengths {lengths} but depths are {depths}; give one dilation per "
            f"block, or a preset name ({', '.join(sorted(presets))})"
        )
    for stage in dilations:
        for d in stage:
            if not _is_int(d) or d < 1:
                raise ValueError(f"{family}: dilations must be integers >= 1, got {d!r} in {dilations}")
    return [[int(d) for d in stage] for stage in dilations]


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------
class ConvTokenizer(nn.Module):
    """Two overlapping 3x3 stride-2 convolutions (stride 4 in all), then LayerNorm; NCHW in, NHWC out."""

    def __init__(self, in_channels: int = 3, embed_dim: int = 64, norm_layer=nn.LayerNorm):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last convolutions: the NHWC view of the result is then contiguous for free
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        return layer_norm(x.permute(0, 2, 3, 1), self.norm)


class ConvDownsampler(nn.Module):
    """3x3 stride-2 convolution C -> 2C (no bias), then LayerNorm; NHWC in and out."""

    def __init__(self, dim: int, norm_layer=nn.LayerNorm):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = norm_layer(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a contiguous NHWC tensor permuted to NCHW is channels_last: no copy in either direction
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        if torch.compiler.is_compiling():
            # with symbolic shapes (torch.compile(dynamic=True), or automatic dynamic after a
            # recompile) inductor (torch 2.13) fails to lower a convolution whose input is this
            # permuted view at batch >= 2 ("ValueRangeError: Invalid ranges" / "cannot determine
            # truth value of Relational"); an NCHW copy compiles (a pure-torch repro: LayerNorm ->
            # permute -> Conv2d). Under torch.compile only: eager keeps the copy-free path.
            x = x.contiguous()
        x = self.reduction(x)
        return layer_norm(x.permute(0, 2, 3, 1), self.norm)


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None,
                 act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fc1 + GELU (and each bias) fused on CPU inference (dinat_backbone.fused_linear)
        return self.drop(linear(self.drop(linear_gelu(x, self.fc1, self.act)), self.fc2))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample during training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class DiNATBlock(nn.Module):
    """Pre-norm transformer block with (dilated) neighbourhood attention, on ``[B, H, W, C]``.

    ``small_input='pad'``: a map smaller than ``kernel_size * dilation`` on an axis is zero-padded
    on the right / bottom *after* ``norm1`` (the whole attention incl. qkv runs on the padded
    map) and cropped back, as NATTEN <= 0.15 and HF transformers do; the checkpoints were trained
    that way. ``'error'`` raises instead.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, dilation: int = 1, mlp_ratio: float = 3.0,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, act_layer=nn.GELU, norm_layer=nn.LayerNorm,
                 layer_scale: Optional[float] = None, small_input: str = "pad", attn_backend: Optional[str] = None,
                 name: str = "block", stride: Optional[int] = None):
        super().__init__()
        if small_input not in ("pad", "error"):
            raise ValueError(f"DiNAT: small_input must be 'pad' or 'error', got {small_input!r}")
        if norm_layer is not nn.LayerNorm or act_layer is not nn.GELU:
            raise ValueError(
                f"DiNATBlock: norm_layer must be nn.LayerNorm and act_layer nn.GELU (the training path fuses "
                f"them with the following Linear, dinat_backbone.lean), got {norm_layer!r}, {act_layer!r}")
        self.dim = dim
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.window_size = kernel_size * dilation
        self.small_input = small_input
        self.name = name  # for error messages, e.g. 'levels.0.blocks.1'
        self.stride = stride  # feature stride of this block's map, for error messages

        self.norm1 = norm_layer(dim)
        self.attn = NeighborhoodAttention2D(
            dim, num_heads, kernel_size=kernel_size, dilation=dilation, qkv_bias=qkv_bias, qk_scale=qk_scale,
            attn_drop=attn_drop, proj_drop=drop, backend=attn_backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(float(layer_scale) * torch.ones(dim))
            self.gamma2 = nn.Parameter(float(layer_scale) * torch.ones(dim))

    def _attention(self, x: Optional[torch.Tensor] = None, qkv: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``self.attn`` on the normalised map ``x`` (or its qkv projection), with the small-map
        handling of ``small_input``: 'pad' folds the padding into the attention (it pads q / k / v
        with the tokens a zero-padded map would hold, or, while exporting, builds one branch-free
        graph for every size)."""
        if self.small_input == "error":
            H, W = (x if qkv is None else qkv).shape[1:3]
            win = self.window_size
            if H < win or W < win:
                min_px = f" (an input of at least {win * self.stride} px per side)" if self.stride else ""
                raise ValueError(
                    f"DiNAT block {self.name} (kernel_size {self.kernel_size}, dilation {self.dilation}) got a "
                    f"{H}x{W} map, smaller than kernel_size * dilation = {win} on an axis; use small_input='pad' "
                    f"(zero-pads the map as the checkpoints were trained), larger images{min_px}, or smaller "
                    "dilations")
        return self.attn(x, qkv=qkv, pad_small_maps=self.small_input == "pad")

    def _training(self) -> bool:
        """Training: the memory-lean path (:mod:`dinat_backbone.lean`, same values and gradients as
        the plain modules, under autocast too). Inference and export graphs run the plain modules."""
        return self.training and torch.is_grad_enabled() and not exporting()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # inference: LayerNorm (and the residual add before norm2) in the compiled kernel on CPU
        # where nothing can tell (dinat_backbone.fused_norm)
        if self._training():
            y = self._attention(qkv=layer_norm_linear(x, self.norm1, self.attn.qkv))
        else:
            y = self._attention(layer_norm(x, self.norm1))
        if self.layer_scale:
            y = self.gamma1 * y
        if self._training():
            x = x + self.drop_path(y)
            y = self._mlp_lean(layer_norm_linear(x, self.norm2, self.mlp.fc1))
        else:
            x, normed = add_layer_norm(x, self.drop_path(y), self.norm2)
            y = self.mlp(normed)
        if self.layer_scale:
            y = self.gamma2 * y
        return x + self.drop_path(y)

    def _mlp_lean(self, hidden: torch.Tensor) -> torch.Tensor:
        """The MLP after fc1: GELU -> fc2 fused when nothing stands between them (MLP dropout keeps
        the plain ops, whose mask autograd saves anyway)."""
        mlp = self.mlp
        if mlp.drop.p == 0.0:
            return gelu_linear(hidden, mlp.fc2)
        return mlp.drop(mlp.fc2(mlp.drop(mlp.act(hidden))))

    def extra_repr(self) -> str:
        return f"name={self.name}, dilation={self.dilation}, layer_scale={self.layer_scale}"


#: NAT's block is DiNAT's with dilation 1.
NATBlock = DiNATBlock


class DiNATLevel(nn.Module):
    """One stage: ``blocks`` then an optional ``downsample``; returns (stage output, next input).

    ``downsample``: None (last stage), or the downsampler class, called as ``downsample(dim,
    norm_layer=norm_layer)`` (:class:`ConvDownsampler` in DiNAT, patch merging in DiNAT_s).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, kernel_size: int, dilations: Sequence[int],
                 drop_path: Sequence[float], downsample: Optional[Callable[..., nn.Module]] = None,
                 with_cp: bool = False, norm_layer=nn.LayerNorm, name: str = "levels.0",
                 stride: Optional[int] = None, **block_kwargs):
        super().__init__()
        self.dim = dim
        self.depth = depth
        self.with_cp = with_cp
        self.blocks = nn.ModuleList([
            DiNATBlock(dim, num_heads, kernel_size=kernel_size, dilation=dilations[j], drop_path=drop_path[j],
                       norm_layer=norm_layer, name=f"{name}.blocks.{j}", stride=stride, **block_kwargs)
            for j in range(depth)
        ])
        self.downsample = None if downsample is None else downsample(dim, norm_layer=norm_layer)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks alone: the stage output, before downsampling."""
        for block in self.blocks:
            if self.with_cp and torch.is_grad_enabled():
                # non-reentrant: also right when x does not require grad (frozen stem)
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.forward_blocks(x)
        return x, (x if self.downsample is None else self.downsample(x))


# ----------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------
class DiNATBackboneBase(nn.Module):
    """The hierarchical neighbourhood-attention backbone that :class:`DiNAT` and
    :class:`dinat_backbone.dinat_s.DiNAT_s` specialise: tokenizer, four stages of
    :class:`DiNATBlock` with a downsampler between them, and a LayerNorm per returned output.

    A family sets the class attributes: ``family`` (its checkpoint family, as
    :func:`dinat_backbone.checkpoint.checkpoint_family` names it: 'DiNAT' for DiNAT / NAT), ``arch_settings`` /
    ``dilation_presets`` (its variant and dilation tables), ``default_arch`` (what fills the
    arguments that neither ``arch`` nor the caller gives), ``stage_attr`` (the name of the stage
    list, part of every ``state_dict`` key: ``levels`` / ``layers``), ``tokenizer_cls``
    (``(in_channels, embed_dim, norm_layer)``, NCHW in, NHWC out at stride 4) and
    ``downsampler_cls`` (``(dim, norm_layer=...)``, NHWC ``C`` -> ``2C`` at half the size).

    Args:
        arch: a key of ``arch_settings`` ('mini', 'tiny', 'small', 'base', 'large' for DiNAT);
            it fills embed_dim, depths, num_heads, mlp_ratio and layer_scale where they are None.
        embed_dim: channels C of stage 1 (stage i has C * 2**i).
        depths, num_heads: blocks and attention heads per stage.
        mlp_ratio: MLP hidden width / C.
        kernel_size: neighbourhood size (odd).
        dilations: None (all 1), a per-stage list of per-block dilations, or a preset name from
            ``dilation_presets`` (DiNAT: 'in1k-224', 'coco', 'ade20k-512', 'ade20k-640',
            'mask2former-k11' for kernel_size=11).
        layer_scale: initial value of the per-channel residual scales gamma1 / gamma2; None takes
            the arch's value, 0 switches them off.
        qkv_bias: bias in the qkv projection.
        drop_rate, attn_drop_rate, drop_path_rate: dropout after the patch embedding / in MLP and
            projection, on attention weights, and the maximum of the linear stochastic-depth schedule.
        in_channels: input channels.
        out_indices: stages (0-3, or -4..-1 from the end; mmdet convention) whose outputs are
            returned, at strides 4, 8, 16, 32.
        out_features: alternative to ``out_indices`` with HF names 'stem', 'stage1' ... 'stage4'
            ('stem' is the normalised patch embedding, stride 4, passed through ``norm_stem``).
        frozen_stages: -1 freezes nothing; 0 the patch embedding; i in 1..4 also stages 1..i (with
            their downsamplers and output norms). Stays frozen after ``train()``.
        with_cp: activation checkpointing per block (saves memory, costs a second forward).
        small_input: 'pad' (zero-pad maps smaller than kernel_size * dilation, as the checkpoints
            were trained) or 'error'.
        attn_backend: na2d backend for every attention (None: fastest available).
        init_cfg: None (random init) or ``dict(type='Pretrained', checkpoint=path_or_url[, prefix=...])``,
            loaded by :meth:`init_weights` (mmengine calls it; nothing is loaded at construction).

    ``forward(x)`` takes ``[B, in_channels, H, W]`` (the dtype of the weights, or any float dtype
    under ``torch.autocast``) and returns a tuple of NCHW maps.
    """

    family: str = "DiNAT"
    arch_settings: Dict[str, dict] = ARCH_SETTINGS
    dilation_presets: Dict[str, List[List[int]]] = DILATION_PRESETS
    default_arch: str = "mini"
    stage_attr: str = "levels"
    tokenizer_cls: Callable[..., nn.Module] = ConvTokenizer
    downsampler_cls: Callable[..., nn.Module] = ConvDownsampler
    _extra_arguments: Tuple[str, ...] = ()  # what a wrapper's constructor adds (named in the unknown-argument error)

    def __init__(self, arch: Optional[str] = None, embed_dim: Optional[int] = None,
                 depths: Optional[Sequence[int]] = None, num_heads: Optional[Sequence[int]] = None,
                 mlp_ratio: Optional[float] = None, kernel_size: int = 7,
                 dilations: Union[None, str, Sequence[Sequence[int]]] = None, layer_scale: Optional[float] = None,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.2, in_channels: int = 3, out_indices: Sequence[int] = (0, 1, 2, 3),
                 out_features: Optional[Sequence[str]] = None, frozen_stages: int = -1, with_cp: bool = False,
                 small_input: str = "pad", attn_backend: Optional[str] = None, init_cfg: Optional[dict] = None,
                 **unknown):
        super().__init__()
        name = type(self).__name__
        if unknown:
            self._reject_unknown_arguments(unknown)
        if arch is not None and arch not in self.arch_settings:
            raise ValueError(f"{name}: unknown arch {arch!r}; choose one of {list(self.arch_settings)} or pass None")
        settings = self.arch_settings[self.default_arch if arch is None else arch]
        embed_dim = require_int(name, "embed_dim", settings["embed_dim"] if embed_dim is None else embed_dim)
        depths = tuple(require_int(name, "depths entries", d, 0)
                       for d in (settings["depths"] if depths is None else depths))
        num_heads = tuple(require_int(name, "num_heads entries", h)
                          for h in (settings["num_heads"] if num_heads is None else num_heads))
        kernel_size = require_int(name, "kernel_size", kernel_size, 3)
        in_channels = require_int(name, "in_channels", in_channels)
        mlp_ratio = settings["mlp_ratio"] if mlp_ratio is None else mlp_ratio
        layer_scale = (settings["layer_scale"] if layer_scale is None else layer_scale) or None  # 0: off
        if len(num_heads) != len(depths):
            raise ValueError(f"{name}: num_heads {num_heads} must have one entry per stage of depths {depths}")
        if small_input not in ("pad", "error"):
            raise ValueError(f"{name}: small_input must be 'pad' or 'error', got {small_input!r}")
        num_levels = len(depths)
        if not _is_int(frozen_stages) or not -1 <= frozen_stages <= num_levels:
            raise ValueError(
                f"{name}: frozen_stages must be an integer in -1..{num_levels} (-1: nothing frozen, 0: the patch "
                f"embedding, i: also stages 1..i), got {frozen_stages!r}")

        self.arch = arch
        self.embed_dim = embed_dim
        self.depths = depths
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.kernel_size = kernel_size
        self.dilations = expand_dilations(dilations, depths, self.dilation_presets, name)
        self.layer_scale = layer_scale
        self.num_levels = num_levels
        self.num_features = [int(embed_dim * 2 ** i) for i in range(num_levels)]
        self.frozen_stages = int(frozen_stages)
        self.with_cp = with_cp
        self.small_input = small_input
        self.init_cfg = init_cfg
        self._set_outputs(out_indices, out_features)

        norm_layer = nn.LayerNorm
        self.patch_embed = self.tokenizer_cls(in_channels, embed_dim, norm_layer)
        self.pos_drop = nn.Dropout(drop_rate)
        # on the cpu, so that builds under torch.device('meta') work
        drop_path = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages = nn.ModuleList()
        for i in range(num_levels):
            stages.append(DiNATLevel(
                dim=self.num_features[i], depth=depths[i], num_heads=num_heads[i], kernel_size=kernel_size,
                dilations=self.dilations[i], drop_path=drop_path[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=self.downsampler_cls if i < num_levels - 1 else None, with_cp=with_cp,
                norm_layer=norm_layer, name=f"{self.stage_attr}.{i}", stride=4 * 2 ** i, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate, layer_scale=layer_scale,
                small_input=small_input, attn_backend=attn_backend))
        self.add_module(self.stage_attr, stages)
        if "stem" in self.out_features:
            self.norm_stem = norm_layer(embed_dim)
        for i in self.out_indices:
            self.add_module(f"norm{i}", norm_layer(self.num_features[i]))

        self._init_random_weights()
        self._freeze_stages()

    def _reject_unknown_arguments(self, unknown: dict):
        import difflib
        import inspect

        accepted = [p for p in inspect.signature(DiNATBackboneBase.__init__).parameters if p not in ("self", "unknown")]
        accepted += list(self._extra_arguments)
        hints = []
        for key in sorted(unknown):
            close = difflib.get_close_matches(key, accepted, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(f"{type(self).__name__}: unknown argument(s) {', '.join(hints)}; the arguments are "
                        f"{', '.join(accepted)}")

    def _set_outputs(self, out_indices, out_features):
        """``out_features`` (names in network order), ``out_indices`` (stage indices among them),
        ``out_channels`` and ``out_strides``."""
        name, num_levels = type(self).__name__, self.num_levels
        stage_names = list(FEATURE_NAMES[: num_levels + 1])
        if out_features is not None:
            out_features = list(out_features)
            unknown = [f for f in out_features if f not in stage_names]
            if unknown or not out_features:
                raise ValueError(f"{name}: out_features {out_features} must be a non-empty subset of {stage_names}")
            self.out_features = [f for f in stage_names if f in out_features]
        else:
            out_indices = list(out_indices)
            # checked before wrapping: -5 must not silently become stage 3
            bad = [i for i in out_indices if not _is_int(i) or not -num_levels <= i < num_levels]
            if bad or not out_indices:
                raise ValueError(
                    f"{name}: out_indices must be stage indices in 0..{num_levels - 1} (or -{num_levels}..-1 from "
                    f"the end), got {out_indices}; use out_features=['stem', ...] for the patch embedding")
            self.out_features = [stage_names[i + 1] for i in sorted({int(i) % num_levels for i in out_indices})]
        self.out_indices = tuple(stage_names.index(f) - 1 for f in self.out_features if f != "stem")
        self.out_channels = [self.embed_dim if f == "stem" else self.num_features[stage_names.index(f) - 1]
                             for f in self.out_features]
        self.out_strides = [4 if f == "stem" else 4 * 2 ** (stage_names.index(f) - 1) for f in self.out_features]

    @property
    def stages(self) -> nn.ModuleList:
        """The stage list (``self.levels`` in DiNAT, ``self.layers`` in DiNAT_s)."""
        return getattr(self, self.stage_attr)

    # -- initialisation --------------------------------------------------------------------------
    @staticmethod
    def _init_module(m: nn.Module):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, NeighborhoodAttention2D) and m.rpb is not None:
            nn.init.trunc_normal_(m.rpb, std=0.02)

    def _init_random_weights(self):
        """The random init, once: at construction, or in :meth:`init_weights` for a model built on
        the meta device (whose parameters hold nothing until ``to_empty``)."""
        self.apply(self._init_module)
        self._randomly_initialised = not any(p.is_meta for p in self.parameters())

    def init_weights(self, logger: Optional[logging.Logger] = None):
        """Random init, then the checkpoint of ``init_cfg`` when it is ``type='Pretrained'``.

        The one pretrained-loading path (the mm backbones use it too): the checkpoint goes through
        :func:`dinat_backbone.checkpoint.load_pretrained_from_cfg` (any supported layout; keys it lacks
        are an error unless ``allow_missing``). The random init happens once (at construction, or here
        for a model built on the meta device). ``logger`` receives the missing / unexpected key report (the mm backbones
        pass mmengine's current logger); default: the ``dinat_backbone.checkpoint`` logger.
        """
        cfg = self.init_cfg
        if not getattr(self, "_randomly_initialised", False):
            self._init_random_weights()
        self._apply_initialisers()
        if cfg is not None:
            from .checkpoint import load_pretrained_from_cfg  # local import: checkpoint imports this module's names

            if logger is not None:
                logger.info(f"{type(self).__name__}: loading pretrained weights from {dict(cfg).get('checkpoint')}")
            load_pretrained_from_cfg(self, cfg, logger=logger)
        self._freeze_stages()

    def _apply_initialisers(self):
        """Between the random init and the checkpoint: nothing here; the mm backbones apply the
        other mmengine initialisers of their ``init_cfg`` (``Normal``, ``Constant``, ...)."""

    # -- freezing --------------------------------------------------------------------------------
    def _frozen_modules(self) -> List[nn.Module]:
        modules: List[nn.Module] = []
        if self.frozen_stages >= 0:
            modules.append(self.patch_embed)
            if hasattr(self, "norm_stem"):
                modules.append(self.norm_stem)
        for i in range(min(self.frozen_stages, self.num_levels)):
            modules.append(self.stages[i])
            if hasattr(self, f"norm{i}"):
                modules.append(getattr(self, f"norm{i}"))
        return modules

    def _freeze_stages(self):
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        return self

    # -- optimiser helpers -------------------------------------------------------------------------
    def no_weight_decay(self) -> set:
        """Full names of the parameters that should get no weight decay: rpb tables and LayerNorms."""
        names = set()
        for module_name, m in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            if isinstance(m, nn.LayerNorm):
                names.update(prefix + n for n, _ in m.named_parameters(recurse=False))
            elif isinstance(m, NeighborhoodAttention2D) and m.rpb is not None:
                names.add(prefix + "rpb")
        return names

    def no_weight_decay_keywords(self) -> set:
        return {"rpb", "norm"}

    # -- forward ---------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor):
        name = type(self).__name__
        if x.dim() != 4:
            raise ValueError(f"{name}: expected an NCHW batch [B, C, H, W], got shape {tuple(x.shape)}")
        weight_dtype = self.patch_embed.norm.weight.dtype
        if x.dtype == weight_dtype:
            return
        if not x.is_floating_point():
            raise TypeError(f"{name}: the image is {x.dtype} but the model computes in {weight_dtype}; convert "
                            f"it (x.to({weight_dtype}), normalised as the checkpoint expects) before the forward")
        if not torch.is_autocast_enabled(x.device.type):  # autocast casts the image itself
            raise TypeError(
                f"{name}: the image is {x.dtype} but the model's weights are {weight_dtype}; cast the image "
                f"(x.to({weight_dtype})) or the model (model.to({x.dtype})), or run the forward under "
                f"torch.autocast({x.device.type!r}, dtype={x.dtype})")

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self._check_input(x)
        x = self.pos_drop(self.patch_embed(x))
        outs = []
        if "stem" in self.out_features:
            outs.append(layer_norm(x, self.norm_stem).permute(0, 3, 1, 2).contiguous())
        last = max(self.out_indices, default=-1)
        for i, stage in enumerate(self.stages):
            if i > last:
                break  # nothing later is returned
            stage_out, x = stage(x) if i < last else (stage.forward_blocks(x), None)
            if i in self.out_indices:
                outs.append(layer_norm(stage_out, getattr(self, f"norm{i}")).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)


class DiNAT(DiNATBackboneBase):
    """Dilated Neighborhood Attention Transformer backbone (NAT when every dilation 1), in the
    module tree of the original SHI-Labs detection / segmentation code (see the module docstring).

    Arguments: see :class:`DiNATBackboneBase`; ``arch`` is a key of :data:`ARCH_SETTINGS`,
    ``dilations`` a list or a key of :data:`DILATION_PRESETS`. Without ``arch`` the unset
    arguments are those of 'mini'.
    """


class NAT(DiNAT):
    """Neighborhood Attention Transformer: :class:`DiNAT` with every dilation 1 (same arguments and
    keys; ``dilations`` may be left out, or must be all ones)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if any(d != 1 for stage in self.dilations for d in stage):
            raise ValueError(f"NAT: every dilation must be 1, got {self.dilations}; use DiNAT for dilated models")
