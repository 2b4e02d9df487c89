#!/usr/bin/env python
"""Speed of the neighbourhood-attention op (issue 2), relative to the machine's GEMM throughput.

Measures, in one process, for each of the DiNAT-T COCO stage shapes for an 800 x 1216 image
((1, 200, 304, 2 heads, 32) d = 1 and d = 28, (1, 50, 76, 8 heads, 32) d = 7; K = 7, rpb):
  1. float32 GEMM throughput (4096 x 4096 matmul, best of several) just before the shape: the
     machine's ceiling, timed next to the op so that both see the same machine;
  2. ``na2d`` forward (no grad) and forward + backward for each backend of the device: best and
     median of several runs;
  3. natten's own op on the same shape where natten is installed (and what happens).

efficiency = useful FLOPs / best time / GEMM FLOP/s (best against best, so that another tenant
of a shared machine slowing a few runs affects neither side), with useful FLOPs = 4 * B * X * Y *
heads * K^2 * head_dim for the forward and 3x that for forward + backward. The issue's goal (25 %
forward, 15 % forward + backward) and its minimum (10 % / 5 %) are printed beside the figures.

    python tools/benchmark_na.py             # CPU: compiled kernel and pure-PyTorch backends
    python tools/benchmark_na.py --quick     # smoke run: 1 repeat (fast calls: 1 s), small GEMM, no torch backend
    python tools/benchmark_na.py --device cuda   # + natten (no rpb) and dense SDPA
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dinat_backbone import ops  # noqa: E402

SHAPES = [  # (B, X, Y, heads, head_dim, dilation)
    (1, 200, 304, 2, 32, 1),
    (1, 200, 304, 2, 32, 28),
    (1, 50, 76, 8, 32, 7),
]
KERNEL_SIZE = 7
GOAL = {"fwd": 25.0, "fwd+bwd": 15.0}
MINIMUM = {"fwd": 10.0, "fwd+bwd": 5.0}


def progress(msg):
    print(msg, file=sys.stderr, flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_times(fn, device, repeats, warmup=3, min_seconds=1.0, max_runs=50):
    """(best, median) wall time of fn in seconds, over at least ``repeats`` runs and, for fast calls,
    more (up to ``max_runs``) until ``min_seconds`` have been spent timing: a few runs of a
    millisecond op say little on a shared machine. Up to ``warmup`` warm-up runs: the first calls at
    a new shape are slower while the C allocator adapts to the new buffer sizes; one run that
    itself takes ``min_seconds`` is warm-up enough (the pure-PyTorch backend takes seconds)."""
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        sync(device)
        if time.perf_counter() - start >= min_seconds:
            break
    times = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_runs):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def gemm_gflops(device, size, tries):
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    a @ b
    for _ in range(tries):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
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
    """Dense attention over the whole map: the upper bound of what a neighbourhood saves."""
    B, X, Y, H, D = q.shape
    flat = lambda t: t.reshape(B, X * Y, H, D).transpose(1, 2)  # noqa: E731
    return torch.nn.functional.scaled_dot_product_attention(flat(q), flat(k), flat(v))


def measure(label, fwd_fn, inputs, device, repeats, with_backward=True):
    """(forward s, forward+backward s) or an error string for each."""
    result = {}
    try:
        with torch.no_grad():
            result["fwd"] = run_times(lambda: fwd_fn(*inputs), device, repeats)
    except Exception as exc:  # OOM, unsupported device, ...
        result["fwd"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    if with_backward and not isinstance(result["fwd"], str):
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]

        def step():
            out = fwd_fn(*leaves)
            out.backward(grad_out)
            for t in leaves:
                if t is not None:
                    t.grad = None

        try:
            grad_out = torch.randn_like(inputs[0])
            result["fwd+bwd"] = run_times(step, device, repeats)
        except Exception as exc:
            result["fwd+bwd"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    elif not with_backward:
        result["fwd+bwd"] = "forward only"
    else:
        result["fwd+bwd"] = "-"
    progress(f"    {label}: " + ", ".join(
        f"{k} best {v[0] * 1e3:.1f} ms, median {v[1] * 1e3:.1f} ms" if not isinstance(v, str) else f"{k} {v}"
        for k, v in result.items()))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per figure at least (best and median; fast calls run until 1 s is spent, "
                        "at most 50 runs); default 5, 1 with --quick")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat (fast calls: 1 s), 2048^2 GEMM, no pure-PyTorch backend")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 5)
    gemm_size, gemm_tries = (2048, 2) if args.quick else (4096, 5)

    progress(f"[benchmark_na] torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    if device.type == "cpu":
        if ops.cpu_kernel_available():
            from dinat_backbone import _C

            progress(f"[benchmark_na] compiled CPU kernel: yes ({_C.isa()})")
        else:
            progress("[benchmark_na] compiled CPU kernel: NOT BUILT (pure-PyTorch fallback only)")
    natten_fn = natten_op()
    rows = []
    for B, X, Y, H, D, d in SHAPES:
        K = KERNEL_SIZE
        shape_label = f"({B}, {X}, {Y}, {H}, {D}) d={d}"
        gemm = gemm_gflops(device, gemm_size, gemm_tries)
        progress(f"[benchmark_na] {shape_label}, K={K}, rpb; GEMM ceiling just before: {gemm:.1f} GFLOP/s "
                 f"({gemm_size}^2 float32 matmul, best of {gemm_tries})")
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, X, Y, H, D, generator=gen).to(device) for _ in range(3))
        rpb = (0.02 * torch.randn(H, 2 * K - 1, 2 * K - 1, generator=gen)).to(device)
        flops = 4 * B * X * Y * H * K * K * D

        candidates = []
        if device.type == "cpu" and ops.cpu_kernel_available():
            candidates.append(("cpu", "na2d backend=cpu (compiled kernel)", True))
        if not args.quick:
            candidates.append(("torch", "na2d backend=torch (pure PyTorch)", True))
        for backend, label, with_bwd in candidates:
            fn = lambda q, k, v, rpb, backend=backend: ops.na2d(q, k, v, K, d, rpb, backend=backend)  # noqa: E731
            rows.append((shape_label, label, flops, gemm, measure(label, fn, (q, k, v, rpb), device, repeats, with_bwd)))

        natten_label = "natten.functional.na2d (natten's own op, no rpb)"
        if natten_fn is None:
            rows.append((shape_label, natten_label, flops, gemm, {"fwd": "not installed", "fwd+bwd": "not installed"}))
            progress(f"    {natten_label}: not installed")
        else:
            fn = lambda q, k, v, rpb: natten_fn(q, k, v, kernel_size=K, dilation=d)  # noqa: E731
            rows.append((shape_label, natten_label, flops, gemm, measure(natten_label, fn, (q, k, v, None), device, repeats)))
        if device.type == "cuda":
            fn = lambda q, k, v, rpb: sdpa_dense(q, k, v)  # noqa: E731
            label = "dense SDPA over the whole map (reference point)"
            rows.append((shape_label, label, flops, gemm, measure(label, fn, (q, k, v, None), device, repeats)))
        del q, k, v, rpb

    print()
    print(f"device {device}, {torch.get_num_threads()} threads; K={KERNEL_SIZE}, rpb; times: best (median) of >= {repeats} runs "
          f"(fast calls: >= 1 s of runs); GEMM: float32 {gemm_size}^2 matmul, best of {gemm_tries}, timed just before each shape")
    print(f"efficiency = useful FLOPs / best time / GEMM; goal: fwd >= {GOAL['fwd']:.0f} %, fwd+bwd >= {GOAL['fwd+bwd']:.0f} % "
          f"(issue minimum {MINIMUM['fwd']:.0f} % / {MINIMUM['fwd+bwd']:.0f} %)")
    header = (f"{'shape':<28} {'implementation':<50} {'GEMM':>6} {'fwd ms (median)':>16} {'fwd eff':>8} "
              f"{'fwd+bwd ms (median)':>20} {'f+b eff':>8}  goal 25/15")
    print(header)
    print("-" * len(header))
    results = []
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
        verdict = "/".join(verdicts)
        print(f"{shape_label:<28} {label:<50} {gemm:>6.0f} {cells[0]:>16} {cells[1]:>8} {cells[2]:>20} {cells[3]:>8}  {verdict}")
        results.append(record)
    print("(goal = meets the 25/15 goal, min = meets the 10/5 minimum, below = neither)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "threads": torch.get_num_threads(),
                       "repeats": repeats, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
