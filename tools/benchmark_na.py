#!/usr/bin/env python
"""Speed of the neighbourhood-attention op, relative to the machine's GEMM throughput.

Measures, in one process, for each of the DiNAT-T COCO stage shapes for an 800 x 1216 image
((1, 200, 304, 2 heads, 32) d = 1 and d = 28, (1, 50, 76, 8 heads, 32) d = 7; K = 7, rpb):
  1. float32 GEMM throughput (4096 x 4096 matmul, best of several) just before the shape: the
     machine's ceiling, timed next to the op so that both see the same machine;
  2. ``na2d`` forward (no grad) and forward + backward for each backend of the device: best and
     median of several runs;
  3. natten's own op on the same shape where natten is installed (and what happens).

efficiency = useful FLOPs / best time / GEMM FLOP/s (best against best, so that another tenant
of a shared machine slowing a few runs affects neither side), with useful FLOPs = 4 * B * X * Y *
heads * K^2 * head_dim for the forward and 3x that for forward + backward. The goal (25 %
forward, 15 % forward + backward) and the minimum (10 % / 5 %) are printed beside the figures
(``op_cpu_eff_*`` of ``bench_common.TARGETS``, the one table of every benchmark target).

    python tools/benchmark_na.py             # CPU: compiled kernel and pure-PyTorch backends
    python tools/benchmark_na.py --quick     # smoke run: 1 repeat (fast calls: 1 s), small GEMM, no torch backend;
                                             # its percentages are not the README table's (see QUICK_NOTE)
    python tools/benchmark_na.py --device cuda   # + triton, natten (no rpb), dense SDPA, and the GPU
                                                 # targets (DiNAT-L shapes, bf16: triton vs flex vs SDPA)

Every run first prints the score work of each backend on K = 7 shapes (score entries computed / the
N * K^2 needed, from each backend's own tiling; for the flex_attention peer, from its block mask),
which needs no device. The peer (``tools/flex_peer.py``) is what a user would write today instead
of this package: compiled ``flex_attention`` with a block mask built from the geometry and an RPB
``score_mod``; the GPU targets time it beside the triton backend.
"""
import argparse
import json
import os
import sys

import torch

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS_DIR))
sys.path.insert(0, TOOLS_DIR)
import _outputs  # noqa: E402
from bench_common import TARGETS, Device, alternating_medians, best_and_median, judge, progress  # noqa: E402

import flex_peer  # noqa: E402
from dinat_backbone import ops  # noqa: E402

SHAPES = [  # (B, X, Y, heads, head_dim, dilation)
    (1, 200, 304, 2, 32, 1),
    (1, 200, 304, 2, 32, 28),
    (1, 50, 76, 8, 32, 7),
]
KERNEL_SIZE = 7
GOAL = {"fwd": TARGETS["op_cpu_eff_goal_fwd"].limit, "fwd+bwd": TARGETS["op_cpu_eff_goal_fwdbwd"].limit}
MINIMUM = {"fwd": TARGETS["op_cpu_eff_min_fwd"].limit, "fwd+bwd": TARGETS["op_cpu_eff_min_fwdbwd"].limit}

#: --quick divides by another ceiling and times fewer runs than the README's table: say so, judge nothing
QUICK_NOTE = ("--quick: efficiencies against a 2048^2 GEMM (best of 2) from one run per figure, not the README "
              "table's 4096^2 GEMM (best of 5) and >= 5 runs, so they are not comparable with its percentages "
              "and no goal / min verdict is given; run without --quick for those")


# ----------------------------------------------------------------------------------------------
# Ceilings and peers
# ----------------------------------------------------------------------------------------------
def gemm_gflops(dev: Device, size, tries, dtype=torch.float32):
    a = torch.randn(size, size, device=dev.device, dtype=dtype)
    b = torch.randn(size, size, device=dev.device, dtype=dtype)
    a @ b
    dev.sync()
    best, _ = best_and_median(lambda: a @ b, dev, tries, warmup=0, min_seconds=0.0)
    return 2 * size**3 / best / 1e9


def natten_op():
    """natten's own na2d (NATTEN >= 0.20, heads-last, no rpb) or None."""
    try:
        import natten  # noqa: F401
        from natten.functional import na2d as fn
    except Exception:
        return None
    return fn


def sdpa_dense(q, k, v):
    """Dense attention over the whole map: the upper bound of what a neighbourhood saves. Returns
    the map layout of q (so that backward takes the same grad_out as na2d)."""
    B, X, Y, H, D = q.shape
    flat = lambda t: t.reshape(B, X * Y, H, D).transpose(1, 2)  # noqa: E731
    out = torch.nn.functional.scaled_dot_product_attention(flat(q), flat(k), flat(v))
    return out.transpose(1, 2).reshape(B, X, Y, H, D)


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"


def training_step(fwd_fn, inputs):
    """A call of ``fwd_fn`` on leaf copies of ``inputs`` (None stays None) and its backward with a
    fixed random output gradient, the leaves' gradients cleared after it."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    grad_out = torch.randn_like(inputs[0])

    def step():
        out = fwd_fn(*leaves)
        out.backward(grad_out)
        for t in leaves:
            if t is not None:
                t.grad = None

    return step


def measure(label, fwd_fn, inputs, dev: Device, repeats, with_backward=True):
    """``{'fwd': (best s, median s), 'fwd+bwd': ...}``, an error string in place of a figure that failed."""
    result = {}
    try:
        with torch.no_grad():
            result["fwd"] = best_and_median(lambda: fwd_fn(*inputs), dev, repeats)
    except Exception as exc:  # OOM, unsupported device, ...
        result["fwd"] = _failure(exc)
    if with_backward and not isinstance(result["fwd"], str):
        try:
            result["fwd+bwd"] = best_and_median(training_step(fwd_fn, inputs), dev, repeats)
        except Exception as exc:
            result["fwd+bwd"] = _failure(exc)
    elif not with_backward:
        result["fwd+bwd"] = "forward only"
    else:
        result["fwd+bwd"] = "-"
    progress(f"    {label}: " + ", ".join(
        f"{k} best {v[0] * 1e3:.1f} ms, median {v[1] * 1e3:.1f} ms" if not isinstance(v, str) else f"{k} {v}"
        for k, v in result.items()))
    return result


# ----------------------------------------------------------------------------------------------
# Score work per backend (no device needed)
# ----------------------------------------------------------------------------------------------
WORK_SHAPES = [(200, 304, 1), (200, 304, 28), (100, 152, 1), (100, 152, 14), (50, 76, 7)]  # (X, Y, d), K = 7


def _triton_work_accounting():
    """The triton kernels' work accounting: tools/na_work.py (moved out of the op), or the op's
    module where that has not happened yet."""
    try:
        import na_work

        return na_work
    except ImportError:
        from dinat_backbone.ops import triton

        return triton


def print_work_ratios(kernel_size=KERNEL_SIZE):
    """Score entries each backend computes / the X * Y * K^2 the op needs: cpu and torch compute
    exactly the K^2 neighbours (1.0); triton its query tiles x the key boxes (forward / dQ, and the
    dK/dV kernel); the flex peer the 128 x 128 blocks of its block mask that hold a neighbour pair
    (residue classes folded into the batch); dense attention N^2."""
    work = _triton_work_accounting()
    limit = TARGETS["op_triton_work"].limit
    print(f"Score work (K = {kernel_size}): entries computed / the N * K^2 needed; triton target <= {limit}x")
    header = (f"{'map':>9} {'d':>3} {'cpu':>5} {'torch':>6} {'triton fwd/dQ':>14} {'triton dK/dV':>13} "
              f"{'flex peer':>18} {'dense SDPA':>11}  triton target")
    print(header)
    print("-" * len(header))
    for X, Y, d in WORK_SHAPES:
        fwd = work.score_work_ratio(X, Y, kernel_size, d, "fwd")
        bwd = work.score_work_ratio(X, Y, kernel_size, d, "dkdv")
        flex = flex_peer.flex_work_ratio(X, Y, kernel_size, d)
        dense = X * Y / kernel_size ** 2
        _, ok = judge(max(fwd, bwd), limit, TARGETS["op_triton_work"].op, 2)
        print(f"{X:>4}x{Y:<4} {d:>3} {1.0:>5.1f} {1.0:>6.1f} {fwd:>13.2f}x {bwd:>12.2f}x {flex:>17.1f}x "
              f"{dense:>10.0f}x  {'PASS' if ok else 'FAIL'}")
    print(flush=True)


# ----------------------------------------------------------------------------------------------
# GPU targets (CUDA only): triton vs the flex peer vs dense SDPA at DiNAT-L's COCO shapes
# ----------------------------------------------------------------------------------------------
#: DiNAT-L at batch 2 of 800 x 1216 (COCO): stage 1 (200 x 304, 6 heads of 32, d = 28) and stage 3
#: (50 x 76, 24 heads of 32, d = 7); K = 7, rpb, bfloat16
GPU_TARGET_SHAPES = [(2, 200, 304, 6, 32, 28), (2, 50, 76, 24, 32, 7)]


def copy_bandwidth(dev: Device, nbytes=2 * 2**30, tries=5):
    """Device copy bandwidth in bytes/s: (read + write) bytes of a large device-to-device copy, best of ``tries``."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=dev.device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    dev.sync()
    best, _ = best_and_median(lambda: dst.copy_(src), dev, tries, warmup=0, min_seconds=0.0)
    return 2 * nbytes / best


def gpu_peers(K, d):
    """(name, function of (q, k, v, rpb), whether it takes rpb) of each implementation the GPU targets
    time; flex last (its first call compiles forward and backward: if a time limit cuts the run,
    the others are measured)."""
    return [
        ("triton", lambda q, k, v, rpb: ops.na2d(q, k, v, K, d, rpb, backend="triton"), True),
        ("dense SDPA", lambda q, k, v, rpb: sdpa_dense(q, k, v), False),
        ("torch", lambda q, k, v, rpb: ops.na2d(q, k, v, K, d, rpb, backend="torch"), True),
        ("flex", lambda q, k, v, rpb: flex_peer.flex_na2d(q, k, v, K, d, rpb), True),
    ]


def profile_fwd_bwd(name, fn, q, k, v, rpb, dev: Device, rows=12):
    """Where one forward+backward's time goes: torch.profiler's table, by device time (printed)."""
    from torch.profiler import ProfilerActivity, profile

    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, rpb)]
    fn(*leaves).float().sum().backward()  # compiled / cached outside the trace
    dev.sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.is_cuda else [])
    with profile(activities=activities) as prof:
        fn(*leaves).float().sum().backward()
        dev.sync()
    print(f"\ntorch.profiler, one forward+backward of {name}:")
    print(prof.key_averages().table(sort_by="cuda_time_total" if dev.is_cuda else "cpu_time_total", row_limit=rows))


#: (target name, the peer the triton backend is compared with) of the "x times faster" targets
GPU_PEER_TARGETS = [("op_gpu_vs_flex", "flex"), ("op_gpu_vs_sdpa", "dense SDPA"), ("op_gpu_vs_torch", "torch")]


def gpu_target_lines(label, t, floor) -> list:
    """The verdict lines of one shape from best times ``t[peer][mode]`` (None: not measured)."""
    lines = []

    def check(name, what, value):
        target = TARGETS[name]
        if value is None:
            lines.append(f"  [FAIL] {what} at {label}: not measured")
            return
        _, ok = judge(value, target.limit, target.op, 1)  # judged on the figure printed
        relation = ">=" if target.op == "≥" else "<="
        lines.append(f"  [{'PASS' if ok else 'FAIL'}] {what} at {label}: {value:.1f}x ({relation} {target.limit:.0f}x)")

    tri = t["triton"]
    check("op_gpu_floor_fwd", "triton forward / memory floor", tri["fwd"] and tri["fwd"] / floor)
    check("op_gpu_floor_fwdbwd", "triton forward+backward / memory floor", tri["fwd+bwd"] and tri["fwd+bwd"] / floor)
    for name, other in GPU_PEER_TARGETS:
        for mode in ("fwd", "fwd+bwd"):
            o, mine = t[other][mode], tri[mode]
            check(name, f"{other} / triton {mode}", (o / mine) if (o and mine) else None)
    return lines


def gpu_targets(repeats, device="cuda", shapes=GPU_TARGET_SHAPES, profile=False, copy_bytes=2 * 2**30):
    """The ``op_gpu_*`` targets of ``bench_common.TARGETS``, measured in this run: the triton
    backend's forward within 4x and forward + backward within 10x of the memory floor (q, k, v and
    out read / written once at the measured copy bandwidth), >= 2x faster than the flex_attention
    peer, >= 20x faster than dense scaled_dot_product_attention over the same tokens, >= 10x faster
    than the torch backend; bfloat16, rpb, K = 7, at DiNAT-L's COCO shapes."""
    dev = Device(device)
    K = KERNEL_SIZE
    bw = copy_bandwidth(dev, copy_bytes)
    print(f"\nGPU targets (op_gpu_*): DiNAT-L COCO shapes, bfloat16, K = {K}, rpb; copy bandwidth {bw / 1e9:.0f} GB/s "
          f"(read + write of a {copy_bytes / 2**20:.0f} MiB device copy, best of 5)")
    lines, records = [], []
    for B, X, Y, H, D, d in shapes:
        label = f"({B}, {X}, {Y}, {H}, {D}) d={d}"
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, X, Y, H, D, generator=gen).to(dev.device, torch.bfloat16) for _ in range(3))
        rpb = (0.02 * torch.randn(H, 2 * K - 1, 2 * K - 1, generator=gen)).to(dev.device)
        floor = 4 * q.numel() * q.element_size() / bw  # q, k, v, out once
        progress(f"[benchmark_na] GPU targets {label}: memory floor {floor * 1e6:.0f} us")
        res = {name: measure(f"{name} {label}", fn, (q, k, v, rpb if with_rpb else None), dev, repeats)
               for name, fn, with_rpb in gpu_peers(K, d)}
        t = {name: {key: (val[0] if not isinstance(val, str) else None) for key, val in r.items()}
             for name, r in res.items()}
        record = {"shape": label, "floor_us": floor * 1e6}
        for name, measured in res.items():
            for mode, figure in measured.items():
                record[f"{name}_{mode}_ms"] = None if isinstance(figure, str) else figure[0] * 1e3
                if isinstance(figure, str):
                    record[f"{name}_{mode}_error"] = figure
        records.append(record)
        lines += gpu_target_lines(label, t, floor)
        if profile:
            for name, fn, _ in gpu_peers(K, d):
                if name in ("triton", "flex") and t[name]["fwd+bwd"] is not None:
                    profile_fwd_bwd(f"{name} at {label}", fn, q, k, v, rpb, dev)
        del q, k, v, rpb
        if dev.is_cuda:
            torch.cuda.empty_cache()
    print("\n".join(lines))
    return records


# ----------------------------------------------------------------------------------------------
# The CPU / device table
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per figure at least (best and median; fast calls run until 1 s is spent, "
                        "at most 50 runs); default 5, 1 with --quick")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 repeat (fast calls: 1 s), 2048^2 GEMM, no pure-PyTorch backend; its "
                        "percentages are not comparable with the README's table and are not judged")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="na2d backends to time (default: the device's: cpu, torch on CPU; triton, torch on "
                        "CUDA); natten and dense SDPA are timed where available either way")
    parser.add_argument("--no-targets", dest="targets", action="store_false",
                        help="CUDA: skip the GPU targets section (DiNAT-L shapes in bfloat16)")
    parser.add_argument("--targets-only", action="store_true",
                        help="CUDA: only the score-work table and the GPU targets (not the DiNAT-T table)")
    parser.add_argument("--profile", action="store_true",
                        help="CUDA: with the GPU targets, a torch.profiler table of one forward+backward of triton "
                        "and of the flex peer at each shape")
    args = parser.parse_args(argv)
    # an unwritable --json fails now, not after the run
    _outputs.check_outputs({"--json": args.json}, error=parser.error)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.gemm_size, args.gemm_tries = (2048, 2) if args.quick else (4096, 5)
    return args


def report_kernel():
    if ops.cpu_kernel_available():
        from dinat_backbone import _C

        progress(f"[benchmark_na] compiled CPU kernel: yes ({_C.isa()})")
    else:
        progress("[benchmark_na] compiled CPU kernel: NOT BUILT (pure-PyTorch fallback only)")


def cpu_bf16_rows(args, dev: Device, shape_label, flops, K, d, q, k, v, rpb):
    """The compiled kernel on bfloat16 q, k, v (rpb float32, as under autocast), against the bfloat16
    GEMM rate; on a CPU with AVX512_BF16 (bfloat16 products) also its conversion path (ISA avx512),
    the path of CPUs without bfloat16 instructions."""
    from dinat_backbone import _C

    gemm = gemm_gflops(dev, args.gemm_size, args.gemm_tries, torch.bfloat16)
    progress(f"[benchmark_na] {shape_label}: bfloat16 GEMM ceiling just before: {gemm:.1f} GFLOP/s")
    active = _C.isa()
    runs = [(active, "bf16 products" if active == "avx512bf16" else "conversion path")]
    if active == "avx512bf16":
        runs.append(("avx512", "conversion path"))
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    rows = []
    fn = lambda q, k, v, rpb: ops.na2d(q, k, v, K, d, rpb, backend="cpu")  # noqa: E731
    for isa, how in runs:
        label = f"na2d backend=cpu bfloat16 ({isa}, {how})"
        _C.set_isa(isa)  # for forward and backward alike
        try:
            res = measure(label, fn, (qb, kb, vb, rpb), dev, args.repeats)
            if isa == active:
                res["alternating"] = alternating_speedups(fn, (q, k, v, rpb), (qb, kb, vb, rpb), 2 * args.repeats + 1)
            rows.append((shape_label, label, flops, gemm, res))
        finally:
            _C.set_isa(active)
    return rows


def alternating_speedups(fn, f32_inputs, bf16_inputs, reps):
    """{'fwd': float32 time / bfloat16 time, 'fwd+bwd': ...} of ``fn`` from medians of ``reps``
    repetitions alternating between the two dtypes (bench_common.alternating_medians): a burst of
    host load then slows both alike, where the best-of-N figures, timed one after the other, move
    the ratio by tens of percent on a shared machine."""
    with torch.no_grad():
        fwd = alternating_medians({"f32": lambda: fn(*f32_inputs), "bf16": lambda: fn(*bf16_inputs)}, reps)
    fwdbwd = alternating_medians({"f32": training_step(fn, f32_inputs), "bf16": training_step(fn, bf16_inputs)}, reps)
    return {"fwd": fwd["f32"] / fwd["bf16"], "fwd+bwd": fwdbwd["f32"] / fwdbwd["bf16"]}


def print_bf16_speedups(rows):
    """float32 time / bfloat16 time of the compiled kernel per shape, beside their targets (reported)."""
    f32 = {r[0]: r[4] for r in rows if r[1] == "na2d backend=cpu (compiled kernel)"}
    lines = []
    for shape_label, label, _, _, res in rows:
        if "bfloat16" not in label or shape_label not in f32:
            continue
        cells = []
        for key, target in (("fwd", TARGETS["op_cpu_bf16_fwd"]), ("fwd+bwd", TARGETS["op_cpu_bf16_fwdbwd"])):
            a, b = f32[shape_label].get(key), res.get(key)
            if isinstance(a, tuple) and isinstance(b, tuple):
                alternating = res["alternating"][key] if "alternating" in res else None
                cells.append(f"{key} {a[0] / b[0]:.2f}x" + (f" / {alternating:.2f}x" if alternating else "")
                             + f" (target {target.op} {target.limit}x)")
        lines.append(f"  {shape_label:<28} {label:<50} " + ", ".join(cells))
    if lines:
        print("\nbfloat16 speed-up of the compiled kernel over its float32 (best vs best / medians of alternating "
              "repetitions where given; reported, not judged):")
        print("\n".join(lines))


def backends_to_time(args, dev: Device):
    """(backend, label, with backward) of the na2d backends the table times on this device."""
    candidates = []
    if not dev.is_cuda:
        if ops.cpu_kernel_available():
            candidates.append(("cpu", "na2d backend=cpu (compiled kernel)", True))
    else:
        candidates.append(("triton", "na2d backend=triton (fused Triton kernels)", True))
    if not args.quick:
        candidates.append(("torch", "na2d backend=torch (pure PyTorch)", True))
    if args.backends:
        candidates = [c for c in candidates if c[0] in args.backends]
    return candidates


def time_shape(args, dev: Device, shape, natten_fn):
    """The rows ``(shape label, implementation, useful FLOPs, GEMM GFLOP/s, timing)`` of one shape."""
    B, X, Y, H, D, d = shape
    K = KERNEL_SIZE
    shape_label = f"({B}, {X}, {Y}, {H}, {D}) d={d}"
    gemm = gemm_gflops(dev, args.gemm_size, args.gemm_tries)
    progress(f"[benchmark_na] {shape_label}, K={K}, rpb; GEMM ceiling just before: {gemm:.1f} GFLOP/s "
             f"({args.gemm_size}^2 float32 matmul, best of {args.gemm_tries})")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, X, Y, H, D, generator=gen).to(dev.device) for _ in range(3))
    rpb = (0.02 * torch.randn(H, 2 * K - 1, 2 * K - 1, generator=gen)).to(dev.device)
    flops = 4 * B * X * Y * H * K * K * D
    rows = []
    for backend, label, with_bwd in backends_to_time(args, dev):
        fn = lambda q, k, v, rpb, backend=backend: ops.na2d(q, k, v, K, d, rpb, backend=backend)  # noqa: E731
        rows.append((shape_label, label, flops, gemm, measure(label, fn, (q, k, v, rpb), dev, args.repeats, with_bwd)))
        if backend == "cpu":
            rows += cpu_bf16_rows(args, dev, shape_label, flops, K, d, q, k, v, rpb)
    natten_label = "natten.functional.na2d (natten's own op, no rpb)"
    if natten_fn is None:
        rows.append((shape_label, natten_label, flops, gemm, {"fwd": "not installed", "fwd+bwd": "not installed"}))
        progress(f"    {natten_label}: not installed")
    else:
        fn = lambda q, k, v, rpb: natten_fn(q, k, v, kernel_size=K, dilation=d)  # noqa: E731
        rows.append((shape_label, natten_label, flops, gemm, measure(natten_label, fn, (q, k, v, None), dev,
                                                                     args.repeats)))
    if dev.is_cuda:
        fn = lambda q, k, v, rpb: sdpa_dense(q, k, v)  # noqa: E731
        label = "dense SDPA over the whole map (reference point)"
        rows.append((shape_label, label, flops, gemm, measure(label, fn, (q, k, v, None), dev, args.repeats)))
    return rows


def print_table(args, dev: Device, rows):
    """The efficiency table; returns its rows as JSON records."""
    print()
    print(f"device {dev.device}, {torch.get_num_threads()} threads; K={KERNEL_SIZE}, rpb; times: best (median) of "
          f">= {args.repeats} runs (fast calls: >= 1 s of runs); GEMM: float32 {args.gemm_size}^2 matmul, best of "
          f"{args.gemm_tries}, timed just before each shape")
    print(f"efficiency = useful FLOPs / best time / GEMM; goal: fwd >= {GOAL['fwd']:.0f} %, "
          f"fwd+bwd >= {GOAL['fwd+bwd']:.0f} % "
          f"(minimum {MINIMUM['fwd']:.0f} % / {MINIMUM['fwd+bwd']:.0f} %)")
    if args.quick:
        print(QUICK_NOTE)
    header = (f"{'shape':<28} {'implementation':<50} {'GEMM':>6} {'fwd ms (median)':>16} {'fwd eff':>8} "
              f"{'fwd+bwd ms (median)':>20} {'f+b eff':>8}  {'goal 25/15' if not args.quick else 'not judged'}")
    print(header)
    print("-" * len(header))
    records = []
    for shape_label, label, flops, gemm, res in rows:
        cells, record = [], {"shape": shape_label, "implementation": label, "gemm_gflops": gemm}
        verdicts = []
        for key, mult in (("fwd", 1), ("fwd+bwd", 3)):
            val = res.get(key, "-")
            if isinstance(val, str):
                cells += [val[:28], ""]
                record[key] = val
            else:
                best, median = val
                eff = 100.0 * mult * flops / best / 1e9 / gemm
                cells += [f"{best * 1e3:.1f} ({median * 1e3:.1f})", f"{eff:.1f} %"]
                record[key + "_ms"] = best * 1e3
                record[key + "_median_ms"] = median * 1e3
                record[key + "_efficiency_pct"] = eff
                verdicts.append("goal" if eff >= GOAL[key] else ("min" if eff >= MINIMUM[key] else "below"))
        if "alternating" in res:
            record["alternating_bf16_speedup"] = res["alternating"]
        verdict = "/".join(verdicts) if not args.quick else "-"
        print(f"{shape_label:<28} {label:<50} {gemm:>6.0f} {cells[0]:>16} {cells[1]:>8} {cells[2]:>20} "
              f"{cells[3]:>8}  {verdict}")
        records.append(record)
    if args.quick:
        print("(not judged: see the --quick note above the table)")
    else:
        print("(goal = meets the 25/15 goal, min = meets the 10/5 minimum, below = neither)")
    print("(bfloat16 rows: GEMM and efficiency against the bfloat16 matmul of the same size)")
    return records


def main(argv=None):
    args = parse_args(argv)
    dev = Device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress(f"[benchmark_na] torch {torch.__version__}, device {dev.device}, threads {torch.get_num_threads()}")
    print_work_ratios()
    if not dev.is_cuda:
        report_kernel()
    results = None
    if not (dev.is_cuda and args.targets_only):
        natten_fn = natten_op()
        rows = [row for shape in SHAPES for row in time_shape(args, dev, shape, natten_fn)]
        results = print_table(args, dev, rows)
        print_bf16_speedups(rows)
    gpu_results = gpu_targets(args.repeats, profile=args.profile) if dev.is_cuda and args.targets else None
    if args.json:
        _outputs.write_text(args.json, json.dumps({"device": str(dev.device), "threads": torch.get_num_threads(),
                                                   "repeats": args.repeats, "results": results,
                                                   "gpu_targets": gpu_results}, indent=2))


if __name__ == "__main__":
    main()
