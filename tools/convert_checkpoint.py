#!/usr/bin/env python
"""Convert any supported DiNAT / NAT / DiNAT_s checkpoint to native backbone weights or an mm file.

    python tools/convert_checkpoint.py SRC DST [--to native|mm] [--model dinat|nat|dinat_s [--arch ARCH]]

SRC and DST are checked before anything is read: a missing or folder source, a folder or
unwritable output is a usage error naming it.

SRC: a path or URL in any layout :func:`dinat_backbone.convert_checkpoint` understands (original
ImageNet ``.pth``, original / mmdet / mmseg detector and segmentor checkpoints, HF transformers
``DinatModel`` / ``DinatForImageClassification`` / ``DinatBackbone`` state dicts, mmengine
``state_dict`` / ``model`` wrappers, ``module.`` prefixes). Loaded with ``weights_only=True``.

DST: ``--to native`` (default) writes the backbone state dict with the native keys
(``patch_embed.*``, ``levels.i.blocks.j.*``, ...); ``--to mm`` writes
``{'state_dict': {'backbone.<key>': ...}, 'meta': {...}}``, loadable with mmengine's
``load_checkpoint`` / ``load_from`` or as ``init_cfg=dict(type='Pretrained', ...)``.
The family (DiNAT / NAT or DiNAT_s) is detected from the keys and printed; ``--model`` other
than the file's family is an error. ``--arch`` additionally checks the weights against a freshly
built model of that size (strict; the arch choices are the family's ``arch_settings``).
DST is checked before SRC is read (DST being SRC, a folder or unwritable is a usage error) and
written atomically: an existing DST is replaced only by a complete file.
"""
import argparse
import os.path as osp
import sys
from collections import OrderedDict

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import _common  # noqa: E402
import _outputs  # noqa: E402
from dinat_backbone import convert_checkpoint  # noqa: E402
from dinat_backbone.checkpoint import checkpoint_family, load_checkpoint_file  # noqa: E402
from dinat_backbone.checkpoint.load import describe_variant, summarize_keys  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="checkpoint path or URL")
    p.add_argument("dst", help="output .pth")
    p.add_argument("--to", choices=["native", "mm"], default="native",
                   help="native backbone keys (default) or an mm 'backbone.'-prefixed state_dict")
    _common.add_model_arguments(p, arch_help="verify against a model of this size (strict key and shape check)",
                                model_default=None, with_dilations=False)
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def check_paths(parser, args) -> None:
    """Usage errors before the (possibly long) read: a missing or folder source. (The output is
    checked by tools/_outputs.check_outputs, as in every tool.)"""
    if "://" not in args.src:
        if osp.isdir(args.src):
            parser.error(f"{args.src} is a folder: give the checkpoint file inside it")
        if not osp.isfile(args.src):
            parser.error(f"checkpoint not found: {args.src}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_paths(parser, args)
    # before loading: DST == SRC would replace the checkpoint with its backbone
    _outputs.check_outputs({"DST": args.dst}, {"source checkpoint SRC": args.src}, error=parser.error)
    obj = load_checkpoint_file(args.src)
    state = convert_checkpoint(obj)
    state = OrderedDict((k, v) for k, v in state.items() if isinstance(v, torch.Tensor))
    n_params = sum(v.numel() for v in state.values())
    family = checkpoint_family(state)
    print(f"[convert] {args.src}: {family or 'unknown'} layout, {len(state)} tensors, {n_params / 1e6:.2f}M values")
    file_model = "dinat_s" if family == "DiNAT_s" else "dinat"
    if args.model is not None and family is not None and args.model != file_model and \
            not (args.model == "nat" and file_model == "dinat"):
        print(f"[convert] the file is a {family} checkpoint, not {args.model}: use --model {file_model}")
        return 1
    args.model = args.model or file_model
    cls, kwargs = _common.model_choice(parser, args, need_arch=False)
    if args.arch:
        model = cls(**kwargs)
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        bad = [k for k in state if k in own and own[k].shape != state[k].shape]
        if missing or unexpected or bad:
            stage_attr = model.stage_attr
            theirs, ours = describe_variant(model, state)[0], describe_variant(model, own)[0]
            print(f"[convert] does not match {args.model}-{args.arch}: the file has {theirs}, the model {ours}; "
                  f"missing {summarize_keys(missing, stage_attr, own) or 'none'}; unexpected "
                  f"{summarize_keys(unexpected, stage_attr, state) or 'none'}; other shapes {bad[:10] or 'none'}")
            # output norms are not in classification checkpoints: only those may be missing
            if unexpected or bad or any(not k.startswith("norm") for k in missing):
                return 1
        else:
            print(f"[convert] matches {args.model}-{args.arch} exactly")
    if args.to == "mm":
        out = {"state_dict": OrderedDict((f"backbone.{k}", v) for k, v in state.items()),
               "meta": {"converted_from": str(args.src), "converter": "dinat_backbone tools/convert_checkpoint.py"}}
    else:
        out = state
    with _outputs.atomic_output(args.dst) as tmp:
        torch.save(out, tmp)
    print(f"[convert] wrote {args.dst} ({args.to})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
