#!/usr/bin/env python
"""The memory-lean MLP's bf16 GELU backward: the compiled kernel's one pass
(``torch.ops.dinat.gelu_backward``: gelu(h) and the GELU gradient) against what it replaces, ATen's
``gelu`` then ``gelu_backward``, at DiNAT-T's COCO (1x3x800x1216) fc1 shapes; medians of alternating
repetitions in one process, fresh outputs every call (as in a training step).

    python tools/benchmark_gelu.py            # DiNAT-T's four stage shapes, 11 repetitions
    python tools/benchmark_gelu.py --quick    # smoke run: small shapes, 3 repetitions
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS_DIR))
sys.path.insert(0, TOOLS_DIR)
from bench_common import alternating_medians  # noqa: E402
from dinat_backbone import _C  # noqa: E402,F401  (registers torch.ops.dinat.*)

#: (tokens, fc1 width) of DiNAT-T's four stages at 1x3x800x1216
SHAPES = [(60800, 192), (15200, 384), (3800, 768), (950, 1536)]
QUICK_SHAPES = [(512, 96), (128, 192)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, 3 repetitions")
    p.add_argument("--reps", type=int, default=11)
    args = p.parse_args(argv)
    shapes, reps = (QUICK_SHAPES, 3) if args.quick else (SHAPES, args.reps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernel ISA {_C.isa()}; bfloat16; "
          f"medians of {reps} alternating repetitions")
    print(f"{'shape':>14}  {'ATen gelu + gelu_backward':>26}  {'dinat::gelu_backward':>21}  speed-up")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n, c in shapes:
        h = torch.randn(n, c, generator=gen).bfloat16()
        g = torch.randn(n, c, generator=gen).bfloat16()
        medians = alternating_medians({"aten": lambda: (F.gelu(h), torch.ops.aten.gelu_backward(g, h)),
                                       "fused": lambda: torch.ops.dinat.gelu_backward(g, h)}, reps)
        a, b = medians["aten"] * 1e3, medians["fused"] * 1e3
        rows.append((n, c, a, b))
        print(f"{f'{n}x{c}':>14}  {a:23.2f} ms  {b:18.2f} ms  {a / b:7.2f}x")
    return rows


if __name__ == "__main__":
    main()
