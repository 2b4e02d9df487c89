#!/usr/bin/env bash
# One-command, idempotent install of dinat-backbone and the OpenMMLab stack on current torch.
#   bash tools/install.sh            # everything (mm stack, test deps, this package editable)
#   SKIP_MM=1 bash tools/install.sh  # only torch + this package (core op/model, no mm glue)
# Re-runs are quick: each step is skipped when already satisfied and pip reuses its wheel cache
# (~/.cache/pip/wheels keeps the locally built mmcv wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip"
NPROC=$(nproc 2>/dev/null || echo 2)
say() { echo "[install] $*"; }
have() { $PY -c "$1" >/dev/null 2>&1; }

# 1. torch: keep whatever torch the user has (CUDA machines), otherwise the pinned CPU wheel.
if have "import torch"; then
  say "torch $($PY -c 'import torch; print(torch.__version__)') already installed: keeping it"
else
  say "installing torch==2.13.0"
  $PIP install torch==2.13.0
fi

# 2. build tools. mmcv 2.1.0's setup.py imports pkg_resources (removed in setuptools 82) and torch
#    2.13's extension builder needs setuptools >= 77. numpy < 2: mmcv 2.1 / mmdet 3.3 predate numpy 2.
say "build tools: setuptools>=77,<82, wheel, ninja, numpy<2"
$PIP install -q "setuptools>=77,<82" wheel ninja "numpy<2"

if [ "${SKIP_MM:-0}" != "1" ]; then
  say "mmengine==0.10.7"
  $PIP install -q mmengine==0.10.7 opencv-python-headless
  if have "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'"; then
    say "mmcv 2.1.0 with ops already installed"
  else
    say "building mmcv==2.1.0 from source with its ops (no wheel exists for this torch)."
    say "This is the long step: about 20-40 minutes on 2 cores the first time; later runs reuse pip's wheel cache."
    MMCV_WITH_OPS=1 MAX_JOBS=$NPROC $PIP install --no-build-isolation mmcv==2.1.0
  fi
  say "mmdet==3.3.0, mmsegmentation==1.2.2 (+ ftfy, regex it does not declare), pycocotools"
  $PIP install -q mmdet==3.3.0 mmsegmentation==1.2.2 ftfy regex pycocotools
fi

say "test and tooling dependencies: pytest, natten-mps, transformers==4.46.3, onnx, onnxruntime"
$PIP install -q pytest natten-mps transformers==4.46.3 onnx onnxruntime

say "dinat-backbone (editable; compiles the CPU neighbourhood-attention kernel)"
$PIP install -q --no-build-isolation -e .
$PY -c "from dinat_backbone import ops; print('[install] compiled CPU kernel:', 'yes' if ops.cpu_kernel_available() else 'NO (pure-PyTorch fallback)')"
say "done"
