#!/usr/bin/env bash
# AddressSanitizer run of the compiled CPU kernel (`make asan`; CI runs it after the tests).
#
# Builds dinat_backbone._C with -fsanitize=address in a scratch copy of the package (the installed
# kernel is left alone), preloads libasan into Python and runs the kernel's exhaustive small-shape
# sweep (float32, float64, bfloat16 on every instruction set the CPU has, including the bfloat16
# products of avx512bf16, and float16), the op tests and the fused GELU backward's tests against that build. An out-of-bounds read
# or write in the kernel then aborts with ASan's report and a non-zero exit status, instead of
# corrupting the heap quietly.
#   bash tools/asan_check.sh                # sweep + op tests
#   bash tools/asan_check.sh -k "13-3"      # extra pytest arguments
set -euo pipefail
PY=${PYTHON:-python3}
# a relative interpreter path (PYTHON=V/bin/python) names a file from the caller's directory; the
# steps below run from the repository root and from the scratch copy
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
cd "$(dirname "$0")/.."
WORK=${ASAN_WORK_DIR:-$PWD/build/asan}
say() { echo "[asan] $*"; }

rm -rf "$WORK"
mkdir -p "$WORK"
# the package sources (no built .so) and the tests
tar --exclude='*.so' --exclude='__pycache__' -cf - dinat_backbone tests setup.py setup.cfg pyproject.toml README.md | tar -xf - -C "$WORK"
say "building the kernel with -fsanitize=address in $WORK (about 2-3 minutes)"
(cd "$WORK" && DINAT_SANITIZE=address "$PY" setup.py -q build_ext --inplace >build.log 2>&1) || { cat "$WORK/build.log"; exit 1; }

LIBASAN=$(gcc -print-file-name=libasan.so)
[ -f "$LIBASAN" ] || { echo "[asan] libasan not found (gcc -print-file-name=libasan.so gave '$LIBASAN'); install gcc's libasan" >&2; exit 1; }
# detect_leaks=0: CPython and torch keep allocations alive until exit, which LeakSanitizer would report
# log_path: pytest captures stderr, and an abort loses what it captured; the report goes to a file
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:symbolize=1:log_path=$WORK/asan-report"
report() {
  if ls "$WORK"/asan-report.* >/dev/null 2>&1; then
    echo "[asan] AddressSanitizer report(s):" >&2
    cat "$WORK"/asan-report.* >&2
  fi
}
trap report EXIT
cd "$WORK"
LD_PRELOAD="$LIBASAN" "$PY" -c "
import dinat_backbone, dinat_backbone.ops as ops, dinat_backbone._C as kernel
assert dinat_backbone.__file__.startswith('$WORK'), dinat_backbone.__file__
assert ops.cpu_kernel_available(), 'the ASan build of the kernel did not load'
assert kernel.__file__.startswith('$WORK'), kernel.__file__
print('[asan] kernel under test:', kernel.__file__)
"
say "running the kernel sweep, the op tests, the GELU backward and LayerNorm tests under AddressSanitizer"
# (not the tests of argument errors: a C++ exception thrown under the preloaded libasan
# aborts in its __cxa_throw interceptor, which found no real __cxa_throw; nothing to do with the kernel)
LD_PRELOAD="$LIBASAN" "$PY" -m pytest -q -p no:cacheprovider tests/test_kernel_sweep.py tests/test_ops.py \
  tests/test_gelu_backward.py --deselect tests/test_gelu_backward.py::test_bad_arguments_are_named \
  tests/test_layer_norm.py --deselect tests/test_layer_norm.py::test_bad_arguments_are_named "$@"
say "no memory errors"
