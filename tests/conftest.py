"""Shared test setup: make the package importable from a plain checkout (no install needed), run the
Triton kernels in Triton's interpreter where there is no GPU, and deselect GPU-only tests there."""
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Without CUDA the triton backend runs in Triton's interpreter (on CPU tensors). Triton reads the
# variable when a kernel is decorated, i.e. when dinat_backbone.na2d_triton is first imported, which
# happens after this. An explicit TRITON_INTERPRET (0 or 1) is left alone; on a GPU nothing is set.
HAVE_CUDA = torch.cuda.is_available()
if not HAVE_CUDA and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a GPU: on a machine without one they are deselected (reported as
    deselected, not skipped); on a GPU machine ``pytest -m cuda`` runs them alone."""
    if HAVE_CUDA:
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("cuda") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
