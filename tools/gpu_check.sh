#!/usr/bin/env bash
# The GPU check, for a machine lent for a few minutes: one command, from the repository
# root, with nothing installed beyond torch + triton (no mm stack, no network, no compiled CPU kernel):
#
#     PYTHONPATH=. bash tools/gpu_check.sh            # results in $OUT (if set) or ./gpu_check_results/
#
# Runs, each under its own time limit so that the whole stays within 6 minutes, and writes
# everything into ONE file (printed at the end):
#   1. environment (GPU, driver, torch / triton / timm / natten versions) and a core smoke test (the
#      package imports on this torch and DiNAT runs forward + backward with backend='triton');
#   2. kernel compilations over ten image sizes (fresh process: Triton's kernel cache after each);
#   3. the cuda-marked tests of tests/test_triton.py: triton parity against the float64 reference
#      (float32 <= 1e-4, bf16 / fp16), torch backend parity, natten parity where natten is installed,
#      the DiNAT-L COCO stage-1 shape against the torch backend, no recompilation over map sizes;
#   4. tools/benchmark_na.py --device cuda --targets-only --profile: score work per implementation,
#      and the GPU targets (bench_common.TARGETS op_gpu_*) at DiNAT-L's COCO shapes in bf16 (batch 2,
#      200x304 with 6 heads of 32, d 28; 50x76 with 24 heads, d 7; K 7, rpb): triton against the
#      memory floor, dense SDPA, the torch backend and the flex_attention peer (tools/flex_peer.py:
#      block mask from the geometry + rpb score_mod, compiled; timed last), with a torch.profiler
#      table of one forward+backward of triton and of flex at each shape;
#   5. tools/benchmark.py --device cuda: DiNAT-mini / DiNAT-T (triton backend) vs Swin-T (mmdet, else
#      timm) in bf16 autocast, with the DiNAT-T / Swin-T fwd+bwd <= 1.0 target (gpu_tiny_fwdbwd; no
#      torch.compile: that alone would take minutes).
# Budgets (s): 40 + 40 + 100 + 120 + 60 = 360, and the whole is cut at GPU_CHECK_SECONDS (345).
# A step that fails or runs out of time is recorded as such and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"  # (newer triton warns when unset)
unset TRITON_INTERPRET
PY=${PYTHON:-python3}

RESULTS_DIR=${OUT:-${GPU_CHECK_DIR:-gpu_check_results}}
mkdir -p "$RESULTS_DIR"
RESULTS="$RESULTS_DIR/gpu_check_$(date +%Y%m%d_%H%M%S).txt"
: >"$RESULTS"
T0=$(date +%s)
DEADLINE=$((T0 + ${GPU_CHECK_SECONDS:-345}))

log() { echo "$*" | tee -a "$RESULTS"; }

# step NAME BUDGET_S CMD...: run CMD with output into the results file, limited to BUDGET_S and to
# what is left before the deadline
step() {
  local name=$1 budget=$2
  shift 2
  local now left limit rc t
  now=$(date +%s)
  left=$((DEADLINE - now))
  limit=$((budget < left ? budget : left))
  log ""
  log "=================================================================================================="
  log "== $name   (limit ${limit} s; $((now - T0)) s elapsed)"
  log "== \$ $*"
  log "=================================================================================================="
  if [ "$limit" -lt 5 ]; then
    log "[gpu_check] SKIPPED: no time left"
    SUMMARY+=("$name: SKIPPED (no time left)")
    return
  fi
  t=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$RESULTS" 2>&1
  rc=$?
  t=$(($(date +%s) - t))
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    log "[gpu_check] TIMED OUT after ${t} s"
    SUMMARY+=("$name: TIMED OUT after ${t} s")
  elif [ "$rc" = 0 ]; then
    log "[gpu_check] ok (${t} s)"
    SUMMARY+=("$name: ok (${t} s)")
  else
    log "[gpu_check] FAILED with exit status $rc (${t} s)"
    SUMMARY+=("$name: FAILED (exit $rc, ${t} s)")
  fi
}
SUMMARY=()

log "[gpu_check] dinat-backbone GPU check, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

step "environment and core smoke test" 40 "$PY" - <<'PYEOF'
import importlib.util, subprocess, time
import torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuda available:", torch.cuda.is_available())
try:
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False).stdout.strip())
except OSError as exc:
    print("nvidia-smi:", exc)
for name in ("triton", "timm", "natten", "mmdet", "pytest", "numpy"):
    spec = importlib.util.find_spec(name)
    version = "not installed"
    if spec is not None:
        try:
            version = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - report, go on
            version = f"import failed: {exc!r}"
    print(f"{name}: {version}")
import dinat_backbone
from dinat_backbone import DiNAT, ops
from dinat_backbone.ops import triton as na2d_triton
print("compiled CPU kernel:", ops.cpu_kernel_available(), "| triton backend importable:", na2d_triton.available())
dev = torch.device("cuda")
q = torch.randn(1, 14, 14, 2, 32, device=dev)
print("reasons (fp32 cuda, K=7 d=2):", na2d_triton.BACKEND.reasons(ops.Call.describe(q, None, 7, 2)) or "none: can serve")
t0 = time.perf_counter()
model = DiNAT(arch="mini", dilations="in1k-224", attn_backend="triton").to(dev)
x = torch.randn(1, 3, 224, 224, device=dev)
with torch.autocast("cuda", dtype=torch.bfloat16):
    outs = model(x)
sum(o.float().mean() for o in outs).backward()
torch.cuda.synchronize()
print("DiNAT-mini fwd+bwd (bf16 autocast, triton, first call incl. compilation):",
      [tuple(o.shape) for o in outs], f"{time.perf_counter() - t0:.1f} s")
PYEOF

step "kernel compilations over ten image sizes" 40 "$PY" - <<'PYEOF'
import torch
from dinat_backbone.ops import triton as tri
# q, k, v as DiNAT makes them (views of one qkv projection), heads and dilation as in its stages
sizes = [(200, 304), (168, 248), (192, 336), (176, 264), (208, 320), (184, 280), (160, 240), (216, 296), (200, 288), (171, 253)]
stages = [(1, 2, (1, 28)), (2, 4, (1, 7, 14)), (4, 8, (1, 3, 5, 7)), (8, 16, (1, 3))]  # (stride, heads, dilations)
counts = []
for X, Y in sizes:
    for stride, heads, dilations in stages:
        x, y = X // stride, Y // stride
        for d in dilations:
            if min(x, y) < 7 * d:
                continue
            qkv = torch.randn(2, x, y, 3, heads, 32, device="cuda", dtype=torch.bfloat16)
            q, k, v = (t.requires_grad_() for t in qkv.unbind(3))
            rpb = torch.randn(heads, 13, 13, device="cuda", requires_grad=True)
            tri.na2d_triton(q, k, v, 7, d, rpb).float().sum().backward()
            with torch.no_grad():
                tri.na2d_triton(q, k, v, 7, d, rpb)
    torch.cuda.synchronize()
    counts.append(tri.compiled_variant_count())
print("image maps at stride 4 (X x Y):", sizes)
print("per map: DiNAT-T's four stages (heads 2 / 4 / 8 / 16, its COCO dilations where they fit), bf16, K=7, "
      "head_dim 32, rpb; forward+backward and a no-grad forward each")
print("compiled kernels in Triton's cache after each map size:", counts)
print("RESULT: kernel compilations over ten image sizes:", counts[-1], "(constant after the first size: "
      f"{all(c == counts[0] for c in counts)})")
PYEOF

step "cuda-marked tests (tests/test_triton.py -m cuda)" 100 \
  "$PY" -m pytest -q -m cuda tests/test_triton.py -s -rA -p no:cacheprovider

step "tools/benchmark_na.py --device cuda (triton vs SDPA vs torch vs flex)" 120 \
  "$PY" tools/benchmark_na.py --device cuda --targets-only --profile --repeats 3

step "tools/benchmark.py --device cuda" 60 \
  "$PY" tools/benchmark.py --device cuda --reps 3 --compile

log ""
log "=================================================================================================="
log "[gpu_check] summary ($(($(date +%s) - T0)) s in all):"
for line in "${SUMMARY[@]}"; do log "  $line"; done
log "[gpu_check] results written to $RESULTS"
