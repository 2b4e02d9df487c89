"""What tools/benchmark.py (backbones) and tools/benchmark_na.py (the op) measure with, in one place:
the device (sync, autocast), wall-clock timing (one call; best and median of N after a warm-up),
peak memory (CUDA allocator; PyTorch's CPU allocator through the profiler, and the process's RSS),
the verdict of a figure against a target (judged on the figure as printed), the machine's
description, and the one table of every benchmark target (:data:`TARGETS`).

A helper module of the two scripts (imported as ``bench_common`` with ``tools/`` on ``sys.path``),
not part of the package.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch


def log(msg: str = ""):
    """A line of the report (stdout)."""
    print(msg, flush=True)


def progress(msg: str):
    """A progress line (stderr: the report on stdout stays clean)."""
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Targets: every figure a benchmark judges, in one table
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Target:
    """A figure and the bound it must meet: ``figure op limit`` (op one of ``<``, ``≤``, ``≥``)."""

    figure: str
    op: str
    limit: float
    why: str


#: Every target the benchmarks judge, by name. The scripts print these names; the figures are
#: measured in the same process as their peers, so a slower or faster machine moves both sides.
TARGETS: Dict[str, Target] = {t_name: t for t_name, t in [
    # backbone, CPU float32, 1x3x800x1216 (coco) and 2x3x512x512 (ade20k-512): tools/benchmark.py
    ("cpu_tiny_fwd", Target("DiNAT-T/Swin-T forward", "≤", 1.0, "DiNAT-T as fast as Swin-T at the same size")),
    ("cpu_tiny_fwdbwd", Target("DiNAT-T/Swin-T fwd+bwd", "≤", 1.1, "training step within 10 % of Swin-T")),
    ("cpu_tiny_mem", Target("DiNAT-T/Swin-T fwd+bwd peak memory", "≤", 1.0, "no more training memory than Swin-T")),
    ("cpu_mini_fwd", Target("DiNAT-mini/Swin-T forward", "<", 1.0, "the smaller model is faster")),
    ("cpu_mini_fwdbwd", Target("DiNAT-mini/Swin-T fwd+bwd", "<", 1.0, "the smaller model trains faster")),
    ("cpu_mini_mem", Target("DiNAT-mini/Swin-T fwd+bwd peak memory", "<", 1.0, "and in less memory")),
    ("cpu_with_cp_cut", Target("with_cp cuts DiNAT-T fwd+bwd peak memory", "≥", 40, "checkpointing earns its time")),
    # backbone, CPU bfloat16 autocast, the same shapes: tools/benchmark.py --dtype bfloat16
    ("cpu_bf16_tiny_fwd", Target("DiNAT-T/Swin-T forward", "≤", 0.85,
                                 "the kernel's native bf16 earns what Swin-T's bf16 GEMMs do, and more")),
    ("cpu_bf16_tiny_fwdbwd", Target("DiNAT-T/Swin-T fwd+bwd", "≤", 0.9,
                                    "a bf16 training step at least as far ahead of Swin-T as in float32")),
    # backbone, GPU, bfloat16 autocast: tools/benchmark.py --device cuda
    ("gpu_tiny_fwdbwd", Target("DiNAT-T/Swin-T fwd+bwd", "≤", 1.0,
                               "the DiNAT paper: faster than Swin at equal size (bf16 autocast)")),
    # the op on CPU, float32, DiNAT-T COCO stage shapes: tools/benchmark_na.py
    ("op_cpu_eff_goal_fwd", Target("forward efficiency (% of GEMM FLOP/s)", "≥", 25.0, "goal")),
    ("op_cpu_eff_goal_fwdbwd", Target("fwd+bwd efficiency (% of GEMM FLOP/s)", "≥", 15.0, "goal")),
    ("op_cpu_eff_min_fwd", Target("forward efficiency (% of GEMM FLOP/s)", "≥", 10.0, "minimum")),
    ("op_cpu_eff_min_fwdbwd", Target("fwd+bwd efficiency (% of GEMM FLOP/s)", "≥", 5.0, "minimum")),
    # the triton tiling (no device needed): tools/benchmark_na.py
    ("op_triton_work", Target("triton score entries / the N * K^2 needed", "≤", 4.5, "tiles cut close to the window")),
    # the op on a GPU, bfloat16, DiNAT-L COCO shapes: tools/benchmark_na.py --device cuda
    ("op_gpu_floor_fwd", Target("triton forward / memory floor", "≤", 4.0, "near the bandwidth bound")),
    ("op_gpu_floor_fwdbwd", Target("triton forward+backward / memory floor", "≤", 10.0, "near the bandwidth bound")),
    ("op_gpu_vs_sdpa", Target("dense SDPA / triton", "≥", 20.0, "the neighbourhood saves what it should")),
    ("op_gpu_vs_torch", Target("torch backend / triton", "≥", 10.0, "the fused kernel beats the unfused one")),
    ("op_cpu_bf16_fwd", Target("compiled kernel bfloat16 forward speed-up over float32", "≥", 1.6,
                               "a CPU with AVX512_BF16 earns its bfloat16 products; reported")),
    ("op_cpu_bf16_fwdbwd", Target("compiled kernel bfloat16 fwd+bwd speed-up over float32", "≥", 1.4,
                                  "a CPU with AVX512_BF16 earns its bfloat16 products; reported")),
    ("op_gpu_vs_flex", Target("flex_attention (block mask + rpb score_mod) / triton", "≥", 2.0,
                              "better than what a user would pick today")),
]}


def judge(value: float, limit: float, op: str, digits: int) -> Tuple[float, bool]:
    """(the figure rounded to the ``digits`` printed, whether that figure meets ``op limit``):
    the printed figure and the verdict always agree (0.996 prints as 1.00 and fails ``< 1.0``)."""
    shown = round(value, digits)
    return shown, {"<": shown < limit, "≤": shown <= limit, "≥": shown >= limit}[op]


def verdict(label: str, value: float, limit: float, op: str, digits: int = 2, unit: str = "",
            judged: bool = True) -> str:
    """One target line, judged by :func:`judge`. When not ``judged`` the measurement is printed
    with its target but no PASS / FAIL."""
    shown, ok = judge(value, limit, op, digits)
    tag = ("PASS" if ok else "FAIL") if judged else "info"
    return f"  [{tag}] {label}: {shown:.{digits}f}{unit} (target {op} {limit}{unit})"


# ----------------------------------------------------------------------------------------------
# Device and machine
# ----------------------------------------------------------------------------------------------
class Device:
    """Where a benchmark runs: ``sync()`` waits for queued work, ``autocast()`` is bf16 / fp16
    autocast for ``dtype`` or plain float32 for None."""

    def __init__(self, name, dtype: Optional[torch.dtype] = None):
        self.device = torch.device(name)
        self.is_cuda = self.device.type == "cuda"
        self.dtype = dtype

    def sync(self):
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def autocast(self):
        if self.dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except Exception:  # noqa: BLE001 - not Linux: keep platform's answer
        pass
    return name


def hardware(dev: Device) -> str:
    """The GPU's name, or the CPU's with the thread count torch uses."""
    if dev.is_cuda:
        return torch.cuda.get_device_name(dev.device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS does not say): a loaded machine's figures are slower."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call of ``fn`` in seconds (``fn`` syncs the device itself)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_and_median(fn: Callable[[], object], dev: Device, repeats: int, warmup: int = 3, min_seconds: float = 1.0,
                    max_runs: int = 50) -> Tuple[float, float]:
    """(best, median) wall time of ``fn`` in seconds, over at least ``repeats`` runs and, for fast
    calls, more (up to ``max_runs``) until ``min_seconds`` have been spent timing: a few runs of a
    millisecond op say little on a shared machine. Up to ``warmup`` warm-up runs: the first calls at
    a new shape are slower while the C allocator adapts to the new buffer sizes; one run that
    itself takes ``min_seconds`` is warm-up enough (the pure-PyTorch backend takes seconds)."""
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        dev.sync()
        if time.perf_counter() - start >= min_seconds:
            break
    times = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_runs):
        start = time.perf_counter()
        fn()
        dev.sync()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def alternating_medians(runs: Dict[str, Callable[[], object]], reps: int) -> Dict[str, float]:
    """Median wall time (seconds) of each of ``runs`` over ``reps`` repetitions in one process, the
    order alternating between repetitions (so that a slow spell of a shared machine hits every run
    alike); one warm-up call each first. CPU calls (no device sync)."""
    for fn in runs.values():
        fn()
    times: Dict[str, list] = {k: [] for k in runs}
    order = list(runs)
    for r in range(reps):
        for k in (order if r % 2 == 0 else order[::-1]):
            times[k].append(timed(runs[k]))
    return {k: statistics.median(v) for k, v in times.items()}


def median_or_nan(times) -> float:
    return statistics.median(times) if times else float("nan")


# ----------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # pragma: no cover - non-glibc
    _LIBC = None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def release_free_memory():
    """gc, and glibc's free lists back to the OS, so that an RSS measurement starts low."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class PeakRSS:
    """Peak resident set size above the RSS at entry, sampled by a thread every ``interval`` s."""

    def __init__(self, interval: float = 5e-4):
        self.interval = interval
        self.peak = 0
        self.base = 0
        self._stop = threading.Event()

    def _run(self):
        peak = self.base
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss > peak:
                peak = rss
            time.sleep(self.interval)
        self.peak = max(peak, _rss_bytes())

    def __enter__(self):
        release_free_memory()
        self.base = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def increase(self) -> int:
        return max(0, self.peak - self.base)


def cpu_allocator_peak(fn: Callable[[], object]) -> int:
    """Peak bytes live in PyTorch's CPU allocator during ``fn()``, above the level at entry: the
    call runs under ``torch.profiler`` with ``profile_memory=True``, which records every allocation
    and free of the c10 CPU allocator with the running total of bytes allocated."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
        stack.extend(node.children)
    if not events:
        return 0
    events.sort()
    # total_allocated is a running total kept by the allocator's reporter across profiling
    # sessions (with stale entries from earlier ones): take it relative to the level before the
    # first event of this call
    start = events[0][2] - events[0][1]
    return max(0, max(e[2] for e in events) - start)


def measure_peak(dev: Device, fn: Callable[[], object]) -> Dict[str, float]:
    """Peak memory ``fn()`` needs above what is allocated before it: ``{'alloc': allocator peak,
    'rss': resident-set peak (CPU only; nan on CUDA)}`` in bytes. CUDA: ``max_memory_allocated``
    minus the allocation before the call; CPU: :func:`cpu_allocator_peak`, with :class:`PeakRSS`."""
    if dev.is_cuda:
        dev.sync()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev.device)
        base = torch.cuda.memory_allocated(dev.device)
        fn()
        dev.sync()
        return {"alloc": torch.cuda.max_memory_allocated(dev.device) - base, "rss": float("nan")}
    with PeakRSS() as m:
        alloc = cpu_allocator_peak(fn)
    return {"alloc": alloc, "rss": m.increase}
