"""Checkpoints tried as a careless or hostile user would (issue 20) and the seams of
``dinat_backbone.checkpoint`` (issue 22 §3): URLs cached by the whole URL and only when complete,
a checkpoint of another size or none of the model's weights is an error, the project's own
training checkpoints load without the mm glue, and files that are no checkpoint are named before
any work. Real files throughout: checkpoints written by torch.save / mmengine's Runner, served over
HTTP by a server on 127.0.0.1."""
import logging
import re
from collections import OrderedDict

import pytest
import torch

from dinat_backbone import DiNAT, convert_checkpoint, load_pretrained

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one thread, no kernel warning

SMALL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), drop_path_rate=0.0)


def escaped(path) -> str:
    return re.escape(str(path))


# ----------------------------------------------------------------------------------------------
# seams: conversion (dict -> dict), file reading, loading into a model
# ----------------------------------------------------------------------------------------------
def test_the_package_parts_and_the_public_names():
    import dinat_backbone.checkpoint as package
    from dinat_backbone.checkpoint import convert, files, load

    assert convert.convert_checkpoint is package.convert_checkpoint is convert_checkpoint
    assert files.load_checkpoint_file is package.load_checkpoint_file
    assert load.load_pretrained is package.load_pretrained is load_pretrained
    assert {"CHECKPOINT_URLS", "checkpoint_family", "resize_rpb"} <= set(package.__all__)
    # conversion touches no files: its module imports nothing that reads them
    assert not any(name in vars(convert) for name in ("os", "zipfile", "pickle", "urllib"))


@pytest.mark.parametrize("prefix", ["backbone.", "dinat."])
def test_the_last_resort_prefix_guess_is_logged(caplog, prefix):
    """A partial state dict (no patch embedding to anchor the layout) had a shared prefix stripped
    silently; now the decision is logged."""
    state = OrderedDict((f"{prefix}{k}", v) for k, v in DiNAT(**SMALL).state_dict().items()
                        if k.startswith("levels.0."))
    with caplog.at_level(logging.WARNING, logger="dinat_backbone.checkpoint"):
        out = convert_checkpoint(state)
    assert set(out) == {k[len(prefix):] for k in state}
    assert f"every key starts with {prefix!r}, which was stripped" in caplog.text


def test_unrecognised_keys_are_used_as_they_are_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="dinat_backbone.checkpoint"):
        out = convert_checkpoint({"levels.0.blocks.0.norm1.weight": torch.ones(16)})
    assert list(out) == ["levels.0.blocks.0.norm1.weight"]
    assert "its 1 keys are used as they are (first: levels.0.blocks.0.norm1.weight)" in caplog.text


def test_one_pretrained_loading_path_for_init_cfg(tmp_path):
    """``init_cfg`` becomes a loaded checkpoint in one function (the core models and the mm wrappers
    call it); a key it does not read is an error, not silently ignored."""
    from dinat_backbone.checkpoint import load_pretrained_from_cfg

    src = DiNAT(**SMALL)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": OrderedDict((f"backbone.{k}", v) for k, v in src.state_dict().items())}, path)
    dst = DiNAT(**SMALL, init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone"))
    dst.init_weights()
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(ValueError, match=r"init_cfg type='Pretrained' has no key\(s\) \['strict'\]"):
        load_pretrained_from_cfg(DiNAT(**SMALL), dict(type="Pretrained", checkpoint=str(path), strict=True))
    with pytest.raises(ValueError, match=r"init_cfg must be None or dict\(type='Pretrained'"):
        DiNAT(**SMALL, init_cfg=dict(type="Kaiming")).init_weights()
