"""Checkpoint conversion, reading and loading for :class:`dinat_backbone.DiNAT` / ``NAT`` / ``DiNAT_s``.

:func:`convert_checkpoint` turns every published layout into the native keys (see
``dinat_backbone/dinat.py`` and ``dinat_backbone/dinat_s.py``), detecting the format from the keys:

* original ImageNet classification models of both families (raw state dict; ``head.*`` and the
  final ``norm.*`` are dropped, the output norms ``norm0..3`` are then missing and keep their init);
* original COCO / ADE20K detector and segmentor checkpoints (``{'state_dict': ...}`` with
  ``backbone.`` prefix; only the backbone is kept), and the authors' detectron2 Mask2Former models
  (``{'model': {'backbone.…', 'sem_seg_head.…'}, 'iteration': …}``);
* HF transformers ``DinatModel``, ``DinatForImageClassification`` (``dinat.`` prefix) and
  ``DinatBackbone`` (also inside e.g. a ``backbone.`` prefix);
* mmengine wrappers (``state_dict`` / ``model``) and DDP ``module.`` prefixes, around any of the
  above.

:func:`load_pretrained` loads a path, URL or dict into a model through it; a DiNAT_s file given
to a DiNAT / NAT model (or the reverse) is an error naming both families
(:func:`checkpoint_family` tells them apart).

Official checkpoints (ImageNet; the classification head is dropped on conversion)::

    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_tiny_in1k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_small_in1k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_base_in1k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_384.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_{tiny,small,base}_in1k_224.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_large_in1k_{224,384}.pth
    https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth

The package in three parts: :mod:`.convert` (format conversion, a dict to a dict, no files),
:mod:`.files` (reading a path, URL or ``.safetensors`` file, with its diagnostics) and
:mod:`.load` (loading into a model: family, shape, finiteness and completeness checks).
"""
from .convert import checkpoint_family, convert_checkpoint
from .files import load_checkpoint_file
from .load import load_pretrained, load_pretrained_from_cfg, resize_rpb
from .urls import CHECKPOINT_URLS

__all__ = ["convert_checkpoint", "load_checkpoint_file", "load_pretrained", "load_pretrained_from_cfg", "resize_rpb",
           "checkpoint_family", "CHECKPOINT_URLS"]
