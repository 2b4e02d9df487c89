"""The backbone / neck channel check: a neck or head built for another backbone width fails before
the run, naming the channels the backbone emits (mmdet itself fails later, with a bare assertion
or a convolution shape error)."""
from __future__ import annotations

from typing import List, Optional

import torch.nn as nn
from mmengine.hooks import Hook

from ..dinat import DiNATBackboneBase

__all__ = ["check_neck_channels", "DiNATChannelCheckHook"]


def _head_mismatch(head: nn.Module, emits: List[int]) -> Optional[str]:
    """What an mmseg decode head reads (``in_index``, ``input_transform``) against ``in_channels``."""
    in_channels, in_index = getattr(head, "in_channels", None), getattr(head, "in_index", None)
    if in_channels is None or in_index is None:
        return None
    indices = [in_index] if isinstance(in_index, int) else list(in_index)
    if any(not -len(emits) <= i < len(emits) for i in indices):
        return f"reads in_index={in_index}, but the backbone returns {len(emits)} maps"
    selected = [emits[i] for i in indices]
    if getattr(head, "input_transform", None) == "resize_concat":
        wanted = sum(selected)
    else:
        wanted = selected[0] if isinstance(in_channels, int) and len(selected) == 1 else selected
    if (list(in_channels) if isinstance(in_channels, (list, tuple)) else in_channels) != wanted:
        return f"reads in_index={in_index} ({wanted} channels) but has in_channels={in_channels}"
    return None


def _pixel_decoder_in_channels(head: nn.Module) -> Optional[List[int]]:
    """The ``in_channels`` a Mask2Former / MaskFormer head's pixel decoder was built for (mmdet's
    ``MSDeformAttnPixelDecoder``, also inside mmseg's head): its 1x1 input convolutions, coarsest
    level first, then the FPN laterals, coarsest first. None for other heads."""
    decoder = getattr(head, "pixel_decoder", None)
    convs = list(getattr(decoder, "input_convs", [])) + list(getattr(decoder, "lateral_convs", []))
    if not convs or not all(hasattr(getattr(c, "conv", None), "in_channels") for c in convs):
        return None
    return [c.conv.in_channels for c in convs][::-1]


def check_neck_channels(model: nn.Module) -> None:
    """ValueError when the channels a DiNAT / NAT / DiNAT_s backbone of an mmdet / mmseg model
    emits (``backbone.out_channels``) are not the ``in_channels`` of its neck, or, without a
    neck, of its decode / auxiliary heads (for their ``in_index``) or its Mask2Former pixel
    decoder. Models without such a backbone are left alone."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, DiNATBackboneBase):
        return
    emits = list(backbone.out_channels)
    what = (f"the backbone {type(backbone).__name__}(arch={backbone.arch!r}, embed_dim={backbone.embed_dim}) "
            f"emits {emits} channels (outputs {backbone.out_features})")
    neck = getattr(model, "neck", None)
    if neck is not None:
        first = neck[0] if isinstance(neck, nn.Sequential) else neck
        expected = getattr(first, "in_channels", None)
        if isinstance(expected, (list, tuple)) and list(expected) != emits:
            raise ValueError(f"{what}, but the neck {type(first).__name__} has in_channels={list(expected)}; set "
                             f"neck.in_channels={emits} in the config (or the backbone's out_indices)")
        return
    for attr in ("panoptic_head", "decode_head"):  # Mask2Former (mmdet / mmseg)
        expected = _pixel_decoder_in_channels(getattr(model, attr, None))
        if expected is not None and expected != emits:
            raise ValueError(f"{what}, but the {attr}'s pixel decoder was built for in_channels={expected}; set "
                             f"{attr}.in_channels={emits} in the config (or the backbone's out_indices)")
    for attr in ("decode_head", "auxiliary_head"):
        heads = getattr(model, attr, None)
        for head in heads if isinstance(heads, nn.ModuleList) else [heads]:
            problem = None if head is None else _head_mismatch(head, emits)
            if problem:
                raise ValueError(f"{what}, but the {attr} {type(head).__name__} {problem}; set {attr}.in_channels "
                                 "(and in_index) in the config to match")


class DiNATChannelCheckHook(Hook):
    """Runs :func:`check_neck_channels` on the runner's model before training, validation or
    testing: a neck built for another backbone width fails at once, naming the channels."""

    def before_run(self, runner) -> None:
        model = runner.model
        check_neck_channels(getattr(model, "module", model))  # under a DDP wrapper: the model inside
