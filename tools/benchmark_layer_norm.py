#!/usr/bin/env python
"""The block's LayerNorm in the compiled kernel (``torch.ops.dinat.layer_norm`` /
``layer_norm_backward``) against what it replaces, ATen's LayerNorm, at DiNAT-T's COCO
(1x3x800x1216) stage shapes: the forward (inference's norm1, and the training functions' forward
and recompute), the residual add + forward (inference's norm2: ``x + attn`` then the LayerNorm), and
the backward; medians of alternating repetitions in one process, fresh outputs every call.

    python tools/benchmark_layer_norm.py                   # bfloat16, DiNAT-T's four stages, 11 repetitions
    python tools/benchmark_layer_norm.py --dtype float32
    python tools/benchmark_layer_norm.py --quick           # smoke run: small shapes, 3 repetitions
"""
import argparse
import os
import sys

import torch

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS_DIR))
sys.path.insert(0, TOOLS_DIR)
from bench_common import alternating_medians  # noqa: E402
from dinat_backbone import _C  # noqa: E402,F401  (registers torch.ops.dinat.*)

#: (tokens, channels) of DiNAT-T's four stages at 1x3x800x1216
SHAPES = [(60800, 64), (15200, 128), (3800, 256), (950, 512)]
QUICK_SHAPES = [(512, 64), (128, 96)]
EPS = 1e-5


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, 3 repetitions")
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    args = p.parse_args(argv)
    shapes, reps = (QUICK_SHAPES, 3) if args.quick else (SHAPES, args.reps)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernel ISA {_C.isa()}; {args.dtype} "
          f"(float32 weight / bias); medians of {reps} alternating repetitions; ms, ATen / kernel")
    print(f"{'shape':>12}  {'forward':>22}  {'add + forward':>22}  {'backward':>22}")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n, c in shapes:
        x, y, g = (torch.randn(n, c, generator=gen).to(dtype) for _ in range(3))
        w, b = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
        _, mean, rstd = torch.native_layer_norm(x, (c,), w, b, EPS)
        medians = alternating_medians({
            "aten fwd": lambda: torch.native_layer_norm(x, (c,), w, b, EPS),
            "kernel fwd": lambda: torch.ops.dinat.layer_norm(x, None, w, b, EPS),
            "aten add": lambda: torch.native_layer_norm(x + y, (c,), w, b, EPS),
            "kernel add": lambda: torch.ops.dinat.layer_norm(x, y, w, b, EPS),
            "aten bwd": lambda: torch.ops.aten.native_layer_norm_backward(g, x, (c,), mean, rstd, w, b,
                                                                          [True, True, True]),
            "kernel bwd": lambda: torch.ops.dinat.layer_norm_backward(g, x, mean, rstd, w, [True, True, True]),
        }, reps)
        row = {"shape": (n, c)}
        cells = []
        for part in ("fwd", "add", "bwd"):
            a, k = medians[f"aten {part}"] * 1e3, medians[f"kernel {part}"] * 1e3
            row[part] = (a, k)
            cells.append(f"{a:6.2f} / {k:5.2f} {a / k:5.2f}x")
        rows.append(row)
        print(f"{f'{n}x{c}':>12}  " + "  ".join(f"{cell:>22}" for cell in cells))
    return rows


if __name__ == "__main__":
    main()
