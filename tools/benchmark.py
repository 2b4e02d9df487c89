#!/usr/bin/env python
"""DiNAT vs Swin-T backbone benchmark: speed, peak memory, params, FLOPs, with_cp, torch.compile.

    python tools/benchmark.py                      # full run (CPU, float32), ~15-25 min on 2 cores
    python tools/benchmark.py --quick              # smoke test: small inputs, 1 repetition, targets not judged
    python tools/benchmark.py --dtype bfloat16     # CPU bfloat16 autocast, judged against the cpu_bf16_* targets
    python tools/benchmark.py --device cuda        # GPU, bfloat16 autocast, DiNAT on the triton backend
    python tools/benchmark.py --shape coco 1 800 1216 coco --reps 7 --models mini tiny swin
    python tools/benchmark.py --plot sweep.png     # time and peak memory against image size (256^2-1344^2, batch 1)

One process builds DiNAT-mini and DiNAT-T (``dinat_backbone.DiNAT``; ``--attn-backend``, default
``triton`` on CUDA) and mmdet's ``SwinTransformer`` (timm's ``swin_tiny_patch4_window7_224`` where
mmdet is not installed; Swin-T: embed 96, depths 2/2/6/2, heads 3/6/12/24, window 7, mlp 4) and,
for each shape (default: 1x3x800x1216 with the 'coco' dilations, 2x3x512x512 with
'ade20k-512'), alternates the models over the repetitions (the order rotates every repetition,
so slow drifts of the machine hit every model alike) and reports medians of

* forward: ``model.eval()`` under ``torch.no_grad()``;
* forward+backward: ``model.train()``, ``loss = sum(out.float().mean())`` over the outputs,
  ``loss.backward()`` (stochastic depth and dropout are 0 for every model, so each repetition
  does the same work; parameter gradients are cleared between repetitions, outside the timer);
* peak memory of each, in a separate untimed pass (see below);
* parameters, and FLOPs of one forward (see below);
* DiNAT-T with ``with_cp=True`` (same weights): forward+backward time and peak memory, and the
  largest difference of its outputs and gradients from the plain model's;
* ``torch.compile`` (inductor, default mode): compile time and median forward of the compiled
  model (``--compile tiny swin`` by default, on the first shape only unless
  ``--compile-all-shapes``), and the largest difference from eager.

Peak memory, in a separate untimed pass. CUDA: ``torch.cuda.max_memory_allocated()`` minus the
allocation before the call. CPU: the same quantity for PyTorch's CPU allocator: the call runs
under ``torch.profiler`` with ``profile_memory=True``, which records every allocation and free
of the c10 CPU allocator with the running total of bytes allocated since the profiler started;
the figure is the largest running total, i.e. the peak of live tensor memory above what existed
before the call (activations, saved tensors, parameter gradients, workspaces the kernels take
from the allocator). It does not depend on glibc's heap behaviour or on what ran before, and is
the same method for every model. For reference the progress log also prints the peak increase
of the process's resident set size (RSS, sampled every 0.5 ms by a thread, after
``gc.collect()`` and ``malloc_trim(0)``), which includes allocator fragmentation and memory
taken outside PyTorch's allocator (e.g. oneDNN scratch buffers).

FLOPs. ``torch.utils.flop_counter.FlopCounterMode`` counts every matmul / linear / convolution
(including Swin's q@k and attn@v); DiNAT's neighbourhood attention is a custom op it cannot see,
so forward hooks on each ``NeighborhoodAttention2D`` add its exact cost, q.k and attn.v:
``2 * 2 * B * X * Y * C * K^2`` FLOPs on the (padded) map it runs on. Reported as GMACs
(FLOPs / 2), the convention of fvcore / mmengine's complexity tool and of the DiNAT and Swin
papers. LayerNorm, softmax, GELU and additions are not counted (for either model).

The closing markdown table (also written to ``--markdown FILE``) is what the README quotes.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings
from typing import Dict, List, Optional

import torch
import torch.nn as nn

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS_DIR))
sys.path.insert(0, TOOLS_DIR)
import _outputs  # noqa: E402
from bench_common import (  # noqa: E402
    TARGETS, Device, hardware, load_average, log, measure_peak, median_or_nan, release_free_memory, timed, verdict)

DEFAULT_SHAPES = [("coco", 1, 800, 1216, "coco"), ("ade20k-512", 2, 512, 512, "ade20k-512")]
QUICK_SHAPES = [("coco", 1, 224, 320, "coco"), ("ade20k-512", 2, 128, 128, "ade20k-512")]
#: --plot's image sides (square, batch 1)
PLOT_SIZES = [256, 512, 768, 1024, 1344]
QUICK_PLOT_SIZES = [128, 192]
MODEL_LABELS = {"mini": "DiNAT-mini", "tiny": "DiNAT-T", "tiny_cp": "DiNAT-T (with_cp)", "swin": "Swin-T"}


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
def build_dinat(arch: str, dilations: Optional[str], with_cp: bool = False,
                attn_backend: Optional[str] = None) -> nn.Module:
    from dinat_backbone.dinat import DiNAT

    return DiNAT(arch=arch, dilations=dilations, drop_path_rate=0.0, with_cp=with_cp, out_indices=(0, 1, 2, 3),
                 attn_backend=attn_backend)


#: which implementation build_swin() used (for the report)
SWIN_SOURCE = None


def build_swin() -> nn.Module:
    """Swin-T: mmdet's SwinTransformer where mmdet is installed, else timm's (same architecture:
    embed 96, depths 2/2/6/2, heads 3/6/12/24, window 7, mlp 4; features at strides 4-32, any input
    size), e.g. on a GPU machine without the mm stack."""
    global SWIN_SOURCE
    try:
        from mmdet.models.backbones.swin import SwinTransformer
    except Exception as mm_exc:  # pragma: no cover - depends on the install
        return _build_timm_swin(mm_exc)
    model = SwinTransformer(
        embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4,
        qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, patch_norm=True,
        out_indices=(0, 1, 2, 3), with_cp=False, convert_weights=False)
    model.init_weights()
    SWIN_SOURCE = "mmdet SwinTransformer"
    return model


def _build_timm_swin(mm_exc) -> nn.Module:
    global SWIN_SOURCE
    try:
        import timm
    except Exception as exc:  # pragma: no cover - depends on the install
        raise SystemExit(
            f"benchmark: neither mmdet's SwinTransformer ({mm_exc!r}) nor timm ({exc!r}) is importable; install the "
            "OpenMMLab stack (bash tools/install.sh) or timm, or leave Swin out with --models mini tiny") from exc
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, features_only=True,
                              out_indices=(0, 1, 2, 3), drop_rate=0.0, drop_path_rate=0.0,
                              dynamic_img_size=True, strict_img_size=False)
    SWIN_SOURCE = f"timm {timm.__version__} swin_tiny_patch4_window7_224 (features_only, NHWC outputs)"
    return model


# ----------------------------------------------------------------------------------------------
# What one repetition runs
# ----------------------------------------------------------------------------------------------
def loss_of(outs) -> torch.Tensor:
    return sum(o.float().mean() for o in outs)


def forward_eval(model, x, dev: Device):
    if isinstance(model, nn.Module):
        model.eval()
    with torch.no_grad(), dev.autocast():
        out = model(x)
    dev.sync()
    return out


def forward_backward(model, x, dev: Device):
    model.train()
    with dev.autocast():
        outs = model(x)
    loss_of(outs).backward()
    dev.sync()
    return outs


def clear_grads(model):
    for p in model.parameters():
        p.grad = None


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model, x, dev: Device) -> float:
    """Multiply-accumulates of one forward (FlopCounterMode + exact neighbourhood-attention cost)."""
    from torch.utils.flop_counter import FlopCounterMode

    from dinat_backbone import ops

    attn_flops = [0]

    def hook(mod, args, kwargs, out):
        # the map the attention runs on, after any small-input padding; FlopCounterMode already
        # counts the einsums of the pure-PyTorch backend, the other backends are counted here
        B, X, Y, _ = out.shape
        spec = ops.TensorSpec((B, X, Y, mod.num_heads, mod.head_dim), out.dtype, out.device)
        selected = ops.select_backend(spec, mod.rpb, mod.kernel_size, mod.dilation, needs_grad=False,
                                      backend=mod.backend).name
        if selected != "torch":
            win = mod.kernel_size * mod.dilation
            attn_flops[0] += 2 * 2 * B * max(X, win) * max(Y, win) * mod.dim * mod.kernel_size ** 2

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules()
               if isinstance(m, ops.NeighborhoodAttention2D)]
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad(), dev.autocast():
            model(x)
    finally:
        for h in handles:
            h.remove()
    total = counter.get_total_flops() + attn_flops[0]
    return total / 2


def max_abs_diff(a, b) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))


def grad_diff(m1, m2) -> float:
    worst = 0.0
    for (n1, p1), (n2, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert n1 == n2, (n1, n2)
        if p1.grad is None and p2.grad is None:
            continue
        scale = max(float(p1.grad.abs().max()), 1e-12)
        worst = max(worst, float((p1.grad - p2.grad).abs().max()) / scale)
    return worst


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------
def build_models(args, dev: Device, dilations, swin: Optional[nn.Module]) -> Dict[str, nn.Module]:
    """The models of one shape, by key (``args.models``, and DiNAT-T with_cp sharing DiNAT-T's weights)."""
    torch.manual_seed(0)
    models: Dict[str, nn.Module] = {}
    for_arch = dilations if callable(dilations) else (lambda arch: dilations)  # PlotDilations: per arch
    for key in args.models:
        if key == "swin":
            models[key] = swin
        else:
            models[key] = build_dinat(key, for_arch(key), attn_backend=args.attn_backend).to(dev.device)
    if args.cp and "tiny" in models:
        models["tiny_cp"] = build_dinat("tiny", for_arch("tiny"), with_cp=True,
                                        attn_backend=args.attn_backend).to(dev.device)
        models["tiny_cp"].load_state_dict(models["tiny"].state_dict())
    return models


def count_costs(args, dev: Device, name, models, x, res):
    """Parameters and GMACs of each model (with_cp: DiNAT-T's)."""
    for key, m in models.items():
        if key == "tiny_cp":
            res[key].update(params=res["tiny"]["params"], macs=res["tiny"]["macs"])
            continue
        res[key]["params"] = count_params(m)
        res[key]["macs"] = count_macs(m, x, dev) if args.flops else float("nan")
        log(f"[{name}] {MODEL_LABELS[key]:18s} params {res[key]['params'] / 1e6:6.2f} M   "
            f"{res[key]['macs'] / 1e9:7.1f} GMACs")


def warm_up(args, dev: Device, name, models, x, fwd_keys):
    """Untimed calls first: the first calls build oneDNN primitives, index caches, thread pools."""
    for key, m in models.items():
        for _ in range(args.warmup):
            if key in fwd_keys:
                forward_eval(m, x, dev)
            forward_backward(m, x, dev)
            clear_grads(m)
        if args.warmup:
            log(f"[{name}] warmed up {MODEL_LABELS[key]}")


def time_alternating(args, dev: Device, name, models, x, fwd_keys, res):
    """``args.reps`` timed repetitions of forward, then of forward+backward, the models in an order
    that rotates every repetition (slow drifts of the machine hit every model alike)."""
    for mode, keys in (("fwd", fwd_keys), ("fwdbwd", list(models))):
        for r in range(args.reps):
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            parts = []
            for key in order:
                m = models[key]
                if mode == "fwd":
                    t = timed(lambda: forward_eval(m, x, dev))
                else:
                    t = timed(lambda: forward_backward(m, x, dev))
                    clear_grads(m)
                res[key][mode].append(t)
                parts.append(f"{MODEL_LABELS[key]} {t:.3f}s")
            log(f"[{name}] {'forward' if mode == 'fwd' else 'fwd+bwd'} rep {r + 1}/{args.reps}: " + ", ".join(parts))


def measure_memory(dev: Device, name, models, x, fwd_keys, res):
    """Peak memory of forward and of forward+backward, in untimed passes; keeps the fwd+bwd outputs
    (for the with_cp parity check)."""
    mib = 2 ** 20
    for key, m in models.items():
        if key in fwd_keys:
            peak_f = measure_peak(dev, lambda: forward_eval(m, x, dev))
        else:
            peak_f = {"alloc": float("nan"), "rss": float("nan")}
        holder = {}
        peak_b = measure_peak(dev, lambda: holder.setdefault("outs", forward_backward(m, x, dev)))
        res[key].update(mem_fwd=peak_f["alloc"], mem_fwdbwd=peak_b["alloc"],
                        rss_fwd=peak_f["rss"], rss_fwdbwd=peak_b["rss"])
        res[key]["outs"] = [o.detach() for o in holder["outs"]]
        rss = "" if dev.is_cuda else (f"   (RSS increase: forward {peak_f['rss'] / mib:.0f} MiB, "
                                      f"fwd+bwd {peak_b['rss'] / mib:.0f} MiB)")
        log(f"[{name}] peak memory {MODEL_LABELS[key]:18s} forward {peak_f['alloc'] / mib:8.0f} MiB   "
            f"fwd+bwd {peak_b['alloc'] / mib:8.0f} MiB{rss}")


def check_with_cp(dev: Device, name, models, x, res):
    """Largest difference of DiNAT-T with_cp's outputs and gradients from the plain model's."""
    if "outs" not in res["tiny"]:
        res["tiny"]["outs"] = [o.detach() for o in forward_backward(models["tiny"], x, dev)]
        res["tiny_cp"]["outs"] = [o.detach() for o in forward_backward(models["tiny_cp"], x, dev)]
    res["tiny_cp"]["out_diff"] = max_abs_diff(res["tiny"]["outs"], res["tiny_cp"]["outs"])
    res["tiny_cp"]["grad_diff"] = grad_diff(models["tiny"], models["tiny_cp"])
    log(f"[{name}] with_cp parity: max |out diff| {res['tiny_cp']['out_diff']:.2e}, "
        f"max |grad diff| / max |grad| {res['tiny_cp']['grad_diff']:.2e}")


def time_compiled(args, dev: Device, name, models, x) -> Dict[str, Dict]:
    """torch.compile (inductor) of each model of ``args.compile``: the first call's time, the median
    compiled and eager forward over ``args.reps`` alternating repetitions, the largest difference."""
    out = {}
    for key in args.compile:
        if key not in models:
            continue
        m = models[key]
        m.eval()  # (mmdet's SwinTransformer.train() does not return self)
        torch._dynamo.reset()
        cm = torch.compile(m)
        log(f"[{name}] compiling {MODEL_LABELS[key]} (inductor) ...")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_compile = timed(lambda: forward_eval(cm, x, dev))
        ref = forward_eval(m, x, dev)
        diff = max_abs_diff(ref, forward_eval(cm, x, dev))
        times_c, times_e = [], []
        for _ in range(args.reps):
            times_c.append(timed(lambda: forward_eval(cm, x, dev)))
            times_e.append(timed(lambda: forward_eval(m, x, dev)))
        out[key] = dict(compile_s=t_compile, fwd=statistics.median(times_c), eager=statistics.median(times_e),
                        diff=diff)
        log(f"[{name}] {MODEL_LABELS[key]} compiled: first call {t_compile:.1f} s, forward "
            f"{out[key]['fwd']:.3f} s (eager {out[key]['eager']:.3f} s), max |diff| vs eager {diff:.1e}")
        torch._dynamo.reset()
    return out


def run_shape(args, dev: Device, shape, swin: Optional[nn.Module], first_shape: bool) -> Dict:
    """Every measurement of one input shape: ``{model key: figures, 'compile': {model key: figures}}``."""
    name, B, H, W, dil = shape
    log(f"\n=== {name}: input {B}x3x{H}x{W}, DiNAT dilations '{dil}' ===")
    models = build_models(args, dev, dil, swin)
    x = torch.randn(B, 3, H, W, device=dev.device)
    res: Dict[str, Dict] = {k: {"fwd": [], "fwdbwd": []} for k in models}
    fwd_keys = [k for k in models if k != "tiny_cp"]  # with_cp changes training only

    count_costs(args, dev, name, models, x, res)
    warm_up(args, dev, name, models, x, fwd_keys)
    time_alternating(args, dev, name, models, x, fwd_keys, res)
    if args.memory:
        measure_memory(dev, name, models, x, fwd_keys, res)
    if "tiny_cp" in models:
        check_with_cp(dev, name, models, x, res)
    for key in models:
        clear_grads(models[key])
        res[key].pop("outs", None)
    compile_here = args.compile and (first_shape or args.compile_all_shapes)
    res["compile"] = time_compiled(args, dev, name, models, x) if compile_here else {}
    for key in models:
        for mode in ("fwd", "fwdbwd"):
            res[key][mode + "_med"] = median_or_nan(res[key][mode])
    del models
    release_free_memory()
    return res


def fmt_ratio(a, b) -> str:
    numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
    if b is None or not numbers or b == 0 or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a / b:.2f}"


def markdown(args, dev: Device, shapes, results, env: str) -> str:
    mib = 2 ** 20
    lines = [f"Backbone benchmark ({env}); medians of {args.reps} alternating repetitions; "
             "peak memory: PyTorch allocator peak above the pre-call level; "
             "ratios are model / Swin-T (lower is better).", ""]
    lines.append("| input | model | params (M) | GMACs | forward (s) | ×Swin | fwd+bwd (s) | ×Swin | "
                 "peak mem fwd (MiB) | ×Swin | peak mem fwd+bwd (MiB) | ×Swin |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape, res in zip(shapes, results):
        name, B, H, W, dil = shape
        sw = res.get("swin")
        for key in ("mini", "tiny", "tiny_cp", "swin"):
            if key not in res:
                continue
            r = res[key]
            ref = sw or {}
            nan = float("nan")
            cp_row = key == "tiny_cp"
            fwd = "–" if cp_row else f"{r['fwd_med']:.3f}"
            fwd_x = "–" if cp_row else fmt_ratio(r["fwd_med"], ref.get("fwd_med"))
            mem_f = "–" if cp_row or "mem_fwd" not in r else f"{r['mem_fwd'] / mib:.0f}"
            mem_f_x = "–" if cp_row else fmt_ratio(r.get("mem_fwd", nan), ref.get("mem_fwd"))
            mem_b = f"{r['mem_fwdbwd'] / mib:.0f}" if "mem_fwdbwd" in r else "–"
            mem_b_x = fmt_ratio(r.get("mem_fwdbwd", nan), ref.get("mem_fwdbwd"))
            lines.append(
                f"| {B}×3×{H}×{W} ({dil}) | {MODEL_LABELS[key]} | {r['params'] / 1e6:.1f} | {r['macs'] / 1e9:.1f} | "
                f"{fwd} | {fwd_x} | {r['fwdbwd_med']:.3f} | {fmt_ratio(r['fwdbwd_med'], ref.get('fwdbwd_med'))} | "
                f"{mem_f} | {mem_f_x} | {mem_b} | {mem_b_x} |")
    comp = [(shape, key, c) for shape, res in zip(shapes, results) for key, c in res.get("compile", {}).items()]
    if comp:
        lines += ["", "| input | model | eager forward (s) | torch.compile forward (s) | speed-up | first call (s) "
                      "| max abs diff |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for shape, key, c in comp:
            name, B, H, W, dil = shape
            lines.append(f"| {B}×3×{H}×{W} ({dil}) | {MODEL_LABELS[key]} | {c['eager']:.3f} | {c['fwd']:.3f} | "
                         f"{c['eager'] / c['fwd']:.2f}× | {c['compile_s']:.0f} | {c['diff']:.1e} |")
    cps = [(shape, res["tiny_cp"]) for shape, res in zip(shapes, results)
           if "tiny_cp" in res and "mem_fwdbwd" in res["tiny_cp"]]
    if cps:
        lines.append("")
        for shape, r in cps:
            base = results[shapes.index(shape)]["tiny"]
            cut = 1 - r["mem_fwdbwd"] / base["mem_fwdbwd"]
            lines.append(f"with_cp on DiNAT-T at {shape[1]}×3×{shape[2]}×{shape[3]}: fwd+bwd peak memory "
                         f"{base['mem_fwdbwd'] / mib:.0f} → {r['mem_fwdbwd'] / mib:.0f} MiB (−{100 * cut:.0f} %), "
                         f"time ×{r['fwdbwd_med'] / base['fwdbwd_med']:.2f}; outputs differ by ≤ {r['out_diff']:.1e}, "
                         f"gradients by ≤ {r['grad_diff']:.1e} (relative to the largest gradient).")
    return "\n".join(lines)


#: why a run's targets are not judged (None: they are)
def unjudged_reason(args, shape) -> Optional[str]:
    if getattr(args, "quick", False):
        return ("--quick: small inputs, one repetition, no warm-up; the targets are for the README's shapes "
                "(python tools/benchmark.py)")
    if shape not in DEFAULT_SHAPES:
        return (f"{shape[1]}×3×{shape[2]}×{shape[3]} is not a target shape (the targets are for "
                + " and ".join(f"{s[1]}×3×{s[2]}×{s[3]} ({s[4]})" for s in DEFAULT_SHAPES) + ")")
    if args.warmup < 1:
        return "no warm-up: the first calls' one-time costs are in the timings"
    return None


def target_line(name: str, value: float, tag: str, judged: bool, **kw) -> str:
    """The verdict line of :data:`bench_common.TARGETS` ``[name]`` for ``value`` measured at ``tag``."""
    t = TARGETS[name]
    return verdict(f"{t.figure} at {tag}", value, t.limit, t.op, judged=judged, **kw)


#: the CPU backbone targets: (target name, model, figure: 'fwd_med' / 'fwdbwd_med' / 'mem_fwdbwd',
#: the autocast dtype of the runs that judge it: None for float32)
CPU_TARGET_FIGURES = [("cpu_tiny_fwd", "tiny", "fwd_med", None), ("cpu_tiny_fwdbwd", "tiny", "fwdbwd_med", None),
                      ("cpu_bf16_tiny_fwd", "tiny", "fwd_med", torch.bfloat16),
                      ("cpu_bf16_tiny_fwdbwd", "tiny", "fwdbwd_med", torch.bfloat16),
                      ("cpu_tiny_mem", "tiny", "mem_fwdbwd", None), ("cpu_mini_fwd", "mini", "fwd_med", None),
                      ("cpu_mini_fwdbwd", "mini", "fwdbwd_med", None), ("cpu_mini_mem", "mini", "mem_fwdbwd", None)]

def _dtype_name(dtype: Optional[torch.dtype]) -> str:
    return "float32" if dtype is None else f"{str(dtype).replace('torch.', '')} autocast"


def targets(shapes, results, args=None) -> List[str]:
    """The CPU backbone targets (``cpu_*`` of :data:`bench_common.TARGETS`) on every shape that has
    Swin-T, judged (PASS / FAIL) only on the shapes they are defined for, with a warm-up, outside
    --quick, on the CPU, and only those of the run's precision (``--dtype``: the float32 rows in
    float32, the ``cpu_bf16_*`` rows in bf16 autocast); otherwise the same lines carry [info] and
    the reason is printed once per shape. A row whose figure a row of the run's precision judges
    is left out (a bf16 run prints DiNAT-T / Swin-T time once, against its bf16 bound)."""
    dtype = autocast_dtype(args) if args is not None else None
    run_rows = {(key, figure) for _, key, figure, row_dtype in CPU_TARGET_FIGURES if row_dtype == dtype}
    out = []
    for shape, res in zip(shapes, results):
        if "swin" not in res:
            continue
        sw = res["swin"]
        tag = f"{shape[1]}×3×{shape[2]}×{shape[3]}"
        reason = unjudged_reason(args, shape) if args is not None else None
        if reason is None and args is not None and torch.device(args.device).type != "cpu":
            reason = f"a {args.device} run: these targets are for the CPU"
        if reason:
            out.append(f"  not judged at {tag}: {reason}")
        other_dtype = []  # rows of another precision: printed after the run's own, as information
        for name, key, figure, row_dtype in CPU_TARGET_FIGURES:
            if key not in res or figure not in res[key]:
                continue
            ratio = res[key][figure] / sw[figure]
            if row_dtype == dtype:
                out.append(target_line(name, ratio, tag, reason is None))
            elif (key, figure) not in run_rows:
                other_dtype.append((row_dtype, target_line(name, ratio, tag, False)))
        if "tiny_cp" in res and "mem_fwdbwd" in res["tiny_cp"]:  # a float32 target
            cut = 1 - res["tiny_cp"]["mem_fwdbwd"] / res["tiny"]["mem_fwdbwd"]
            line = target_line("cpu_with_cp_cut", 100 * cut, tag, dtype is None and reason is None, digits=0, unit=" %")
            if dtype is None:
                out.append(line)
            else:
                other_dtype.append((None, line))
        for row_dtype in dict.fromkeys(d for d, _ in other_dtype):
            out.append(f"  not judged at {tag}, {_dtype_name(row_dtype)} targets: this run is {_dtype_name(dtype)}")
            out.extend(line for d, line in other_dtype if d == row_dtype)
    return out


def gpu_targets(shapes, results, dtype, args=None) -> List[str]:
    """``gpu_tiny_fwdbwd``: DiNAT-T forward+backward at most 1.0x Swin-T in bf16 autocast on a GPU (the
    DiNAT paper's claim that it is faster than Swin at equal size); judged as :func:`targets` is,
    and only in bf16 autocast."""
    out = []
    for shape, res in zip(shapes, results):
        if "swin" in res and "tiny" in res:
            tag = f"{shape[1]}×3×{shape[2]}×{shape[3]}"
            reason = unjudged_reason(args, shape) if args is not None else None
            if reason is None and dtype != torch.bfloat16:
                reason = "not bf16 autocast: the target is for bf16"
            if reason:
                out.append(f"  not judged at {tag}: {reason}")
            ratio = res["tiny"]["fwdbwd_med"] / res["swin"]["fwdbwd_med"]
            out.append(target_line("gpu_tiny_fwdbwd", ratio, tag, reason is None))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (float32) or cuda (bfloat16 autocast)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "float32", "bfloat16"), default=None,
                   help="fp32, or bf16 autocast (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: small inputs (1x3x224x320 coco, 2x3x128x128 ade20k-512), 1 repetition, "
                        "no warm-up, "
                        "torch.compile of DiNAT-T only (Swin-T's compile alone takes minutes); prints the targets' "
                        "measurements without judging them")
    p.add_argument("--shape", action="append", nargs=5, metavar=("NAME", "B", "H", "W", "DILATIONS"),
                   help="a shape to run (repeatable), e.g. --shape coco 1 800 1216 coco; replaces the defaults")
    p.add_argument("--models", nargs="+", default=None, choices=("mini", "tiny", "swin"),
                   help="default: mini tiny swin; with --plot: tiny swin")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions per model (default 5; --plot 3; --quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per model first (default 1; --quick 0)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--compile", nargs="*", default=None, choices=("mini", "tiny", "swin"),
                   help="models to time under torch.compile (default: tiny swin; --quick: tiny; no names: none)")
    p.add_argument("--compile-all-shapes", action="store_true", help="compile on every shape, not only the first")
    p.add_argument("--no-cp", dest="cp", action="store_false", help="skip DiNAT-T with_cp")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory passes")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip FLOP counting")
    p.add_argument("--markdown", default=None, help="also write the markdown table to this file")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="instead of the table: forward and forward+backward time and peak memory against image size "
                        "(square images, batch 1, --plot-sizes) for DiNAT-T and Swin-T, drawn into this PNG "
                        "(with --quick: two small sizes, one repetition)")
    p.add_argument("--plot-sizes", nargs="+", type=int, default=None, metavar="SIDE",
                   help=f"image sides for --plot (default {' '.join(map(str, PLOT_SIZES))}; "
                        f"--quick {' '.join(map(str, QUICK_PLOT_SIZES))})")
    p.add_argument("--attn-backend", default=None,
                   help="na2d backend for DiNAT's attention (default: 'triton' on CUDA, automatic on CPU)")
    args = p.parse_args(argv)
    if args.attn_backend is None and args.device.startswith("cuda"):
        args.attn_backend = "triton"
    if args.models is None:
        args.models = ["tiny", "swin"] if args.plot else ["mini", "tiny", "swin"]
    if args.reps is None:
        args.reps = 1 if args.quick else (3 if args.plot else 5)
    if args.warmup is None:
        args.warmup = 0 if args.quick else 1
    if args.compile is None:
        # Swin-T's first compiled call alone took 217 s on 2 cores: not in a smoke run
        args.compile = ["tiny"] if args.quick else ["tiny", "swin"]
    if args.plot:
        # a size sweep: no with_cp, compile or FLOPs (the table has them); the shapes' dilations
        # follow the image (PlotDilations)
        args.cp, args.compile, args.flops = False, [], False
        sizes = args.plot_sizes or (QUICK_PLOT_SIZES if args.quick else PLOT_SIZES)
        args.shapes = [(f"{side}x{side}", 1, side, side, PlotDilations(side)) for side in sizes]
    elif args.shape:
        args.shapes = [(n, int(b), int(h), int(w), None if d.lower() in ("none", "1") else d)
                       for n, b, h, w, d in args.shape]
    else:
        args.shapes = QUICK_SHAPES if args.quick else DEFAULT_SHAPES
    return args


# ----------------------------------------------------------------------------------------------
# --plot: time and memory against image size
# ----------------------------------------------------------------------------------------------
class PlotDilations:
    """DiNAT's per-block dilations for a ``side x side`` image: the COCO pattern with each stage's
    dilation capped at ``map // 7`` (the largest at which a 7 x 7 window still fits the stage's
    map, DiNAT's own rule), so that small images are not padded to 28 x 7 maps. Called with the
    arch (the depths differ); prints as what it is."""

    def __init__(self, side: int):
        self.side = side

    def __call__(self, arch: str) -> List[List[int]]:
        from dinat_backbone.dinat import ARCH_SETTINGS, expand_dilations

        per_stage = expand_dilations("coco", ARCH_SETTINGS[arch]["depths"])
        return [[min(d, max(1, (self.side >> (2 + i)) // 7)) for d in stage] for i, stage in enumerate(per_stage)]

    def __str__(self):
        return f"coco, capped at map // 7 ({max(max(stage) for stage in self('tiny'))} at most)"

    __repr__ = __str__


#: (result key, panel, line style) of the plotted figures
PLOT_FIGURES = [("fwd_med", "time", "-"), ("fwdbwd_med", "time", "--"),
                ("mem_fwd", "memory", "-"), ("mem_fwdbwd", "memory", "--")]


def plot_table(args, results) -> str:
    """The plotted figures as a markdown table."""
    mib = 2 ** 20
    keys = [k for k in ("tiny", "swin", "mini") if k in args.models]
    lines = ["| image | " + " | ".join(f"{MODEL_LABELS[k]} fwd (s) | {MODEL_LABELS[k]} fwd+bwd (s) | "
                                        f"{MODEL_LABELS[k]} peak fwd (MiB) | {MODEL_LABELS[k]} peak fwd+bwd (MiB)"
                                        for k in keys) + " |",
             "|---|" + "---:|" * (4 * len(keys))]
    for shape, res in zip(args.shapes, results):
        cells = []
        for k in keys:
            r = res[k]
            cells += [f"{r['fwd_med']:.3f}", f"{r['fwdbwd_med']:.3f}",
                      f"{r.get('mem_fwd', float('nan')) / mib:.0f}", f"{r.get('mem_fwdbwd', float('nan')) / mib:.0f}"]
        lines.append(f"| {shape[2]}×{shape[3]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_plot(args, results, env: str, path: str):
    """Two panels against the image side: median time (forward solid, forward+backward dashed) and
    peak memory, one colour per model; the environment line as the caption."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    sides = [shape[2] for shape in args.shapes]
    mib = 2 ** 20
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    colours = {"tiny": "tab:blue", "swin": "tab:orange", "mini": "tab:green"}
    for key in [k for k in ("tiny", "swin", "mini") if k in args.models]:
        for figure, panel, style in PLOT_FIGURES:
            values = [res[key].get(figure, float("nan")) for res in results]
            ax = ax_t if panel == "time" else ax_m
            if panel == "memory":
                values = [v / mib for v in values]
            mode = "forward" if figure in ("fwd_med", "mem_fwd") else "forward+backward"
            ax.plot(sides, values, style, marker="o", color=colours[key], label=f"{MODEL_LABELS[key]} {mode}")
    ax_t.set(title=f"Time (median of {args.reps} alternating repetitions)", ylabel="seconds")
    ax_m.set(title="Peak memory above the pre-call level", ylabel="MiB")
    for ax in (ax_t, ax_m):
        ax.set(xlabel="image side (square image, batch 1)", xticks=sides)
        ax.grid(alpha=0.3)
        ax.legend()
    shown = " vs ".join(MODEL_LABELS[k] for k in ("tiny", "swin", "mini") if k in args.models)
    fig.suptitle(f"{shown}: {env}", fontsize=9, wrap=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def autocast_dtype(args) -> Optional[torch.dtype]:
    """bf16 autocast (the default on CUDA) or None for float32 (the default on CPU)."""
    name = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    return {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}[name]


def describe_environment(args, dev: Device) -> str:
    """torch, the hardware, the precision, the op's implementation and mmdet's version, in one line."""
    from dinat_backbone import ops

    if dev.is_cuda:
        attn = args.attn_backend or ops.available_backends(dev.device)[0]
    else:
        attn = "compiled CPU kernel" if ops.cpu_kernel_available() else "pure-PyTorch fallback (kernel not built)"
    try:
        import mmdet

        mmdet_v = mmdet.__version__
    except Exception:
        mmdet_v = "not installed"
    return (f"torch {torch.__version__}, {hardware(dev)}, {'bf16 autocast' if dev.dtype is not None else 'float32'}, "
            f"na2d: {attn}, mmdet {mmdet_v}")


def report(args, dev: Device, results, env: str):
    """The markdown table (and ``--markdown`` file), then the targets' verdicts."""
    table = markdown(args, dev, args.shapes, results, env)
    log("\n" + table)
    checks = targets(args.shapes, results, args)
    if checks:
        log("\nTargets (CPU backbone, bench_common.TARGETS cpu_*):")
        for line in checks:
            log(line)
    if dev.is_cuda:
        gpu_checks = gpu_targets(args.shapes, results, dev.dtype, args)
        if gpu_checks:
            log("\nGPU target (bench_common.TARGETS gpu_tiny_fwdbwd):")
            for line in gpu_checks:
                log(line)
    if args.markdown:
        _outputs.write_text(args.markdown, table + "\n")


def main(argv=None):
    args = parse_args(argv)
    # an unwritable --markdown / --plot fails now, not after the run
    _outputs.check_outputs({"--markdown": args.markdown, "--plot": args.plot})
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = Device(args.device, autocast_dtype(args))
    env = describe_environment(args, dev)
    log(f"[benchmark] {env}")
    log(f"[benchmark] shapes {[s[:5] for s in args.shapes]}, models {args.models}, reps {args.reps}, "
        f"warm-up {args.warmup}, compile {args.compile or 'off'}, with_cp {'on' if args.cp else 'off'}")
    t_start = time.perf_counter()
    swin = build_swin().to(dev.device) if "swin" in args.models else None
    if swin is not None:
        log(f"[benchmark] Swin-T: {SWIN_SOURCE}")
        env += f", Swin-T: {SWIN_SOURCE}"
    results = [run_shape(args, dev, shape, swin, first_shape=(i == 0)) for i, shape in enumerate(args.shapes)]
    if args.plot:
        load = load_average()
        if load is not None:
            env += f", load average {load:.1f} at the end"
        table = plot_table(args, results)
        log("\n" + table)
        if args.markdown:
            _outputs.write_text(args.markdown, table + "\n")
        draw_plot(args, results, env, args.plot)
        log(f"\n[benchmark] plot written to {args.plot}")
    else:
        report(args, dev, results, env)
    log(f"\n[benchmark] done in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
