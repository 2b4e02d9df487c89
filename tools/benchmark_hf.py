#!/usr/bin/env python
"""transformers' ``DinatBackbone`` through ``dinat_backbone.hf`` against this package's ``DiNAT`` on the same weights.

    python tools/benchmark_hf.py                          # DiNAT-T, 'coco' dilations, 1x3x800x1216, CPU, forward
    python tools/benchmark_hf.py --backward --reps 3      # also forward+backward
    python tools/benchmark_hf.py --arch mini --shape 1 3 512 512 --dilations ade20k-512

Both models are built from one set of weights (the transformers model's, converted with
``convert_checkpoint``) and checked to give the same feature maps first. Forward runs under
``torch.no_grad()`` in ``eval()`` mode; forward+backward in ``train()`` mode with drop path 0, loss =
sum of the outputs' means. The two models alternate over the repetitions (the order flips every
repetition, so slow drifts of the machine hit both alike) after one warm-up each; the figures are
medians. The target: the bridge costs at most 10 % over the native model (ratio <= 1.10). What
differs is transformers' own code around the same attention op: three q / k / v projections
instead of one fused qkv, and its padding and layout copies.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

# run from a checkout like the other tools, installed or not
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGET_RATIO = 1.10


def build(arch: str, dilations: str, kernel_size: int):
    import dinat_backbone.hf as hf
    from dinat_backbone import DiNAT, convert_checkpoint

    status = hf.enable()
    from transformers import DinatBackbone, DinatConfig

    native = DiNAT(arch=arch, dilations=dilations, kernel_size=kernel_size, drop_path_rate=0.0,
                   out_indices=(0, 1, 2, 3))
    per_block = [[block.attn.dilation for block in level.blocks] for level in native.levels]
    config = DinatConfig(embed_dim=native.embed_dim, depths=[len(d) for d in per_block],
                         num_heads=[level.blocks[0].attn.num_heads for level in native.levels],
                         mlp_ratio=native.levels[0].blocks[0].mlp.fc1.out_features / native.embed_dim,
                         kernel_size=kernel_size, dilations=per_block, drop_path_rate=0.0,
                         layer_scale_init_value=1e-5 if native.levels[0].blocks[0].layer_scale else 0.0,
                         out_features=["stage1", "stage2", "stage3", "stage4"])
    torch.manual_seed(0)
    bridged = DinatBackbone(config)
    with torch.no_grad():  # off the init (LayerNorms at identity would hide a mismatch)
        for p in bridged.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    native.load_state_dict(convert_checkpoint(bridged.state_dict()), strict=True)
    return status, bridged, native


def run_once(model, x, backward: bool, is_hf: bool) -> float:
    if backward:
        model.train()
        start = time.perf_counter()
        out = model(x)
        maps = out.feature_maps if is_hf else out
        sum(m.float().mean() for m in maps).backward()
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return elapsed
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--dilations", default="coco")
    parser.add_argument("--kernel-size", type=int, default=7)
    parser.add_argument("--shape", type=int, nargs=4, default=(1, 3, 800, 1216), metavar=("B", "C", "H", "W"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--backward", action="store_true", help="also time forward+backward")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    status, bridged, native = build(args.arch, args.dilations, args.kernel_size)
    x = torch.randn(*args.shape)
    with torch.no_grad():
        diff = max((a - b).abs().max().item()
                   for a, b in zip(bridged.eval()(x).feature_maps, native.eval()(x)))
    print(f"{status}")
    print(f"DiNAT-{args.arch} ({args.dilations} dilations, K={args.kernel_size}) at {'x'.join(map(str, args.shape))}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
          f"max |feature map difference| {diff:.2e}")
    modes = ["forward"] + (["forward+backward"] if args.backward else [])
    worst = 0.0
    for mode in modes:
        backward = mode != "forward"
        times = {"bridge": [], "native": []}
        for name, model in (("bridge", bridged), ("native", native)):  # warm-up
            run_once(model, x, backward, name == "bridge")
        for rep in range(args.reps):
            order = [("bridge", bridged), ("native", native)]
            for name, model in order if rep % 2 == 0 else order[::-1]:
                times[name].append(run_once(model, x, backward, name == "bridge"))
        bridge, ref = statistics.median(times["bridge"]), statistics.median(times["native"])
        ratio = bridge / ref
        worst = max(worst, ratio)
        print(f"{mode:17s} DinatBackbone via dinat_backbone.hf {bridge * 1e3:8.0f} ms   DiNAT {ref * 1e3:8.0f} ms   "
              f"ratio {ratio:.3f} ({'meets' if ratio <= TARGET_RATIO else 'misses'} the <= {TARGET_RATIO:.2f} target; "
              f"medians of {args.reps})")
    return 0 if worst <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
