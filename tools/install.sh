#!/usr/bin/env bash
# One-command, idempotent install of dinat-backbone and the OpenMMLab stack on current torch.
#   bash tools/install.sh            # everything (mm stack, test deps, this package editable)
#   SKIP_MM=1 bash tools/install.sh  # the core only: torch, build tools, Pillow, this package + kernel
#                                    # (no mm stack, no test / ONNX / Triton dependencies)
# Re-runs are quick: each step checks the installed versions first and calls pip only when
# something is missing; pip's wheel cache (~/.cache/pip/wheels) keeps the locally built mmcv wheel.
# Every pip call uses tools/constraints.txt (numpy<2, opencv<4.12, setuptools>=77,<82).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip"
NPROC=$(nproc 2>/dev/null || echo 2)
export PIP_CONSTRAINT="$PWD/tools/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
T0=$(date +%s)
say() { echo "[install +$(( $(date +%s) - T0 ))s] $*"; }
have() { $PY -c "$1" >/dev/null 2>&1; }
# satisfied SPEC...: every requirement spec is installed at a matching version (no pip call)
satisfied() {
  $PY - "$@" >/dev/null 2>&1 <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        v = version(req.name)
    except PackageNotFoundError:
        sys.exit(1)
    if req.specifier and not req.specifier.contains(v, prereleases=True):
        sys.exit(1)
PYEOF
}
# ensure STEP SPEC...: pip install the specs unless all are already satisfied
ensure() {
  local step=$1; shift
  if satisfied "$@"; then say "$step: already installed"; else say "$step: pip install $*"; $PIP install -q "$@"; fi
}

# 1. torch: keep whatever torch the user has (CUDA machines), otherwise the pinned CPU wheel.
if have "import torch"; then
  say "torch $($PY -c 'import torch; print(torch.__version__)') already installed: keeping it"
else
  say "installing torch==2.13.0"
  $PIP install torch==2.13.0
fi

# the torch floor (MIN_TORCH in dinat_backbone/version.py): a kept torch that is too old is an error
# here, not a silent replacement by pip when this package is installed
if ! floor=$($PY -c "import runpy; runpy.run_path('dinat_backbone/version.py')" 2>&1); then
  echo "[install] ${floor##*ImportError: }" >&2
  exit 1
fi

# 2. build tools. mmcv 2.1.0's setup.py imports pkg_resources (removed in setuptools 82) and torch
#    2.13's extension builder needs setuptools >= 77. numpy < 2: mmcv 2.1 / mmdet 3.3 predate numpy 2.
ensure "build tools" "setuptools>=77,<82" wheel ninja "numpy<2"
# Pillow: image I/O of tools/extract_features.py (torch does not depend on it)
ensure "Pillow (tools/extract_features.py)" Pillow

if [ "${SKIP_MM:-0}" != "1" ]; then
  # mmengine depends on (GUI) opencv-python; the headless build of the same version is
  # reinstalled over it so that cv2 imports without libGL.
  if satisfied mmengine==0.10.7 "opencv-python<4.12" "opencv-python-headless<4.12" && have "import cv2"; then
    say "mmengine 0.10.7 + opencv: already installed"
  else
    say "mmengine==0.10.7 + opencv (<4.12: numpy 1.x builds)"
    $PIP install -q mmengine==0.10.7 "opencv-python<4.12"
    CV=$($PY -c "from importlib.metadata import version; print(version('opencv-python'))")
    $PIP install -q --force-reinstall --no-deps "opencv-python-headless==$CV"
  fi
  if have "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'"; then
    say "mmcv 2.1.0 with ops already installed"
  else
    say "building mmcv==2.1.0 from source with its ops (no wheel exists for this torch)."
    say "This is the long step: about 20-40 minutes on 2 cores the first time; later runs reuse pip's wheel cache."
    MMCV_WITH_OPS=1 MAX_JOBS=$NPROC $PIP install --no-build-isolation mmcv==2.1.0
  fi
  ensure "mmdet 3.3.0, mmsegmentation 1.2.2 (+ ftfy, regex it does not declare), pycocotools" \
    mmdet==3.3.0 mmsegmentation==1.2.2 ftfy regex pycocotools
  # mmdet's CocoPanopticMetric imports panopticapi (not on PyPI under that name); panopticapi-lite
  # ships the same panopticapi.evaluation / panopticapi.utils modules
  ensure "panopticapi (panopticapi-lite) for mmdet's CocoPanopticMetric" panopticapi-lite
fi

if [ "${SKIP_MM:-0}" != "1" ]; then
  # triton: the fused GPU backend's kernels, run by the CPU tests in Triton's interpreter;
  # onnxscript: torch 2.13's ONNX exporter (tools/export_onnx.py) imports it and torch does not declare it
  # ruff: the lint step of .ci/run (pinned: new releases add rules)
  # transformers: the tested release of dinat_backbone.hf (5.25.0 needs kernels >= 0.19.1, not on PyPI yet)
  ensure "test and tooling dependencies" pytest natten-mps transformers==5.24.0 onnx onnxruntime onnxscript \
    "triton>=3.0" ruff==0.17.6
  # transformers 4.46.3 beside it, for tests/test_hf_reference.py: the last DiNAT whose own forward ran on
  # natten <= 0.17.4 (natten-mps stands in), run in a subprocess with PYTHONPATH=$HF_REFERENCE_DIR. Only what
  # 5.x's dependencies do not satisfy goes there: huggingface-hub < 1, tokenizers 0.20 and requests (+ its deps).
  HF_REFERENCE_DIR=${DINAT_HF_REFERENCE_DIR:-$HOME/.cache/dinat-backbone/transformers-4.46.3-py$($PY -c 'import sys; print("%d%d" % sys.version_info[:2])')}
  if PYTHONPATH="$HF_REFERENCE_DIR" $PY -c "import transformers, transformers.models.dinat.modeling_dinat; assert transformers.__version__ == '4.46.3'" >/dev/null 2>&1; then
    say "transformers 4.46.3 reference copy in $HF_REFERENCE_DIR: already installed"
  else
    say "transformers 4.46.3 reference copy: pip install --target $HF_REFERENCE_DIR"
    mkdir -p "$HF_REFERENCE_DIR"
    $PIP install -q --no-deps --upgrade --target "$HF_REFERENCE_DIR" transformers==4.46.3 huggingface-hub==0.36.2 \
      tokenizers==0.20.3 requests urllib3 charset-normalizer idna certifi
    PYTHONPATH="$HF_REFERENCE_DIR" $PY -c "import transformers.models.dinat.modeling_dinat"
  fi
fi

# this package, editable, with its compiled CPU kernel; rebuilt only when the kernel sources,
# setup.py / setup.cfg changed since the last build (or it is not installed).
stale=1
if satisfied dinat-backbone && have "import dinat_backbone.ops as o; assert o.cpu_kernel_available()"; then
  so=$(ls -t dinat_backbone/_C*.so 2>/dev/null | head -1 || true)
  if [ -n "$so" ] && [ -z "$(find dinat_backbone/csrc setup.py setup.cfg -newer "$so" -type f 2>/dev/null | head -1)" ]; then
    stale=0
  fi
fi
if [ "$stale" = 0 ]; then
  say "dinat-backbone: editable install and compiled kernel up to date"
else
  say "dinat-backbone (editable; compiles the CPU neighbourhood-attention kernel)"
  $PIP install -q --no-build-isolation -e .
fi
# 6. consistency: the numpy<2 / opencv<4.12 downgrades can leave a package installed earlier with a
#    requirement it no longer meets (e.g. ml-dtypes 0.6 wants numpy 2); let pip re-resolve those.
if ! check=$($PIP check 2>&1); then
  broken=$(echo "$check" | awk '{print $1}' | sort -u | tr '\n' ' ')
  say "re-resolving packages with broken requirements: $broken"
  # shellcheck disable=SC2086
  $PIP install -q $broken
  $PIP check
fi
$PY -c "from dinat_backbone import ops; print('[install] compiled CPU kernel:', 'yes' if ops.cpu_kernel_available() else 'NO (pure-PyTorch fallback)')"
say "done in $(( $(date +%s) - T0 )) s"
