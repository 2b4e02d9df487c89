#!/usr/bin/env python
"""Compile the triton backend's kernels for a GPU architecture without a GPU, and print their
register use and spills (ptxas, via cuobjdump from the triton wheel).

Triton's interpreter (what the CPU tests run) executes the kernels' logic but not the compiler, so
this catches what only compilation sees (dot shape limits, layouts of the reshapes / permutes,
constexpr use) on a machine with no GPU, and shows the register pressure of a tile choice. The
arguments are specialised the way the runtime does for a model call: pointers 16-byte aligned, the
channel stride 1, the other strides divisible by 16; the map sizes, tile counts and the dilation
are runtime values (``do_not_specialize``), exactly as at run time.

    python tools/triton_compile_check.py                    # sm_90 (H100 / H200), bf16 fp16 fp32
    python tools/triton_compile_check.py --arch 80 --dtype bf16 --num-warps 4 --num-stages 2
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

if os.environ.get("TRITON_INTERPRET") == "1":  # the kernels must be real JIT functions here
    os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # (silences triton 3.9's default-change warning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import _outputs  # noqa: E402
from dinat_backbone.ops import triton as tri
from dinat_backbone.ops.triton import _kernels, _launch

DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
# arguments that are 1 in a model call (the runtime turns those into constants) and those the
# runtime sees divisible by 16 (all strides but the channel one, for head_dim 32 and 3 * C channels)
ONES = {"sqd", "skd", "svd", "sod", "sgd", "srb"}
DIV16 = {n + a for n in ("sq", "sk", "sv", "so", "sg") for a in "bxyh"}
FLOATS = {"qk_scale", "scale"}
STATS = {"lse_ptr", "delta_ptr", "rpb_ptr", "drpb_ptr"}
POINTERS = {"q_ptr", "k_ptr", "v_ptr", "out_ptr", "dout_ptr", "dq_ptr", "dk_ptr", "dv_ptr"} | STATS


def kernel_specs(dtype, kernel_size, head_dim, rpb):
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    common = dict(KERNEL_SIZE=kernel_size, HEAD_DIM=head_dim, HEAD_DIM_PADDED=_launch.head_dim_padded(head_dim),
                  HAS_RPB=rpb, **_launch.dot_flags(torch_dtype))
    common["DOTS_IN_FLOAT32"] = False  # compiled, not interpreted

    def tiles(name):
        cfg = tri.TILES[name]
        return {"TILE_X": cfg["tile_x"], "TILE_Y": cfg["tile_y"], "INNER_X": cfg["inner_x"], "INNER_Y": cfg["inner_y"]}

    return [
        ("fwd", _kernels.fwd_kernel, dict(common, **tiles("fwd"))),
        ("dq", _kernels.dq_kernel, dict(common, RPB_GRAD=rpb, RPB_BINS_PADDED=_launch.rpb_bins_padded(kernel_size),
                                        BF16_PARTS=3 if dtype == "fp32" else 2, **tiles("dq"))),
        ("dkdv", _kernels.dkdv_kernel, dict(common, **tiles("dkdv"))),
    ]


def compile_kernel(fn, constexprs, dtype, arch, num_warps, num_stages):
    constexprs = dict(constexprs)
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ONES:
            constexprs[name] = 1
            signature[name] = "constexpr"
        elif name in POINTERS:
            signature[name] = "*fp32" if name in STATS else "*" + DTYPES[dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name in DIV16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def resource_usage(kernel):
    """'REG:n STACK:n ...' from cuobjdump -res-usage on the cubin (the triton wheel ships cuobjdump)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return "(no cuobjdump in this triton)"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=False).stdout
    fields = " ".join(line.strip() for line in out.splitlines() if "REG:" in line).split()
    return " ".join(x for x in fields if x.split(":")[0] in ("REG", "STACK", "SHARED", "LOCAL"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities, e.g. 80 90")
    p.add_argument("--dtype", nargs="+", default=["bf16", "fp16", "fp32"], choices=list(DTYPES))
    p.add_argument("--kernel-size", type=int, nargs="+", default=[7])
    p.add_argument("--head-dim", type=int, nargs="+", default=[32])
    p.add_argument("--no-rpb", action="store_true")
    p.add_argument("--num-warps", type=int, default=None, help="override na2d_triton.num_warps()")
    p.add_argument("--num-stages", type=int, default=None, help="override TILES' num_stages")
    p.add_argument("--dump", default=None, help="write each kernel's TTGIR and PTX into this folder")
    args = p.parse_args(argv)
    tiles = {kind: dict(cfg) for kind, cfg in tri.TILES.items()}
    print(f"[triton_compile_check] triton {triton.__version__}; tiles {tiles}")
    failures = 0
    for arch in args.arch:
        for dtype in args.dtype:
            for K in args.kernel_size:
                for D in args.head_dim:
                    for name, fn, cx in kernel_specs(dtype, K, D, not args.no_rpb):
                        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
                        nw = args.num_warps or tri.num_warps(name, torch_dtype, D)
                        ns = args.num_stages or tri.TILES[name]["num_stages"]
                        label = f"sm_{arch} {dtype} K={K} head_dim={D} {name:4s} warps={nw} stages={ns}"
                        t0 = time.perf_counter()
                        try:
                            kernel = compile_kernel(fn, cx, dtype, arch, nw, ns)
                        except Exception as exc:  # noqa: BLE001 - reported, counted as a failure
                            failures += 1
                            print(f"{label}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
                            continue
                        if args.dump:
                            os.makedirs(args.dump, exist_ok=True)
                            for ext in ("ttgir", "ptx"):
                                path = os.path.join(args.dump, f"{name}_{dtype}_sm{arch}_K{K}_D{D}.{ext}")
                                _outputs.write_text(path, kernel.asm[ext])
                        print(f"{label}: ok in {time.perf_counter() - t0:.1f} s, {resource_usage(kernel)}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
