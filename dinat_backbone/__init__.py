"""dinat-backbone: DiNAT / NAT backbones on current PyTorch, with an OpenMMLab plugin.

The core (``ops``, ``dinat``, ``dinat_s``, ``checkpoint``) needs torch alone; ``dinat_backbone.mm`` registers
the backbone with mmdet / mmseg and is loaded by configs through ``custom_imports``.
"""
from .version import MIN_TORCH, __version__  # first: refuses a torch older than MIN_TORCH
from .checkpoint import convert_checkpoint, load_checkpoint_file, load_pretrained
from .dinat import ARCH_SETTINGS, DILATION_PRESETS, NAT, DiNAT
from .dinat_s import DiNAT_s
from .ops import NeighborhoodAttention2D, na2d

#: The backbone families by their command-line name (``--model`` of the tools).
MODEL_FAMILIES = {"dinat": DiNAT, "nat": NAT, "dinat_s": DiNAT_s}

__all__ = [
    "__version__",
    "MIN_TORCH",
    "na2d",
    "NeighborhoodAttention2D",
    "DiNAT",
    "NAT",
    "DiNAT_s",
    "MODEL_FAMILIES",
    "ARCH_SETTINGS",
    "DILATION_PRESETS",
    "convert_checkpoint",
    "load_checkpoint_file",
    "load_pretrained",
]
