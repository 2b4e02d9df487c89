"""Shared test setup: make the package importable from a plain checkout (no install needed), run the
Triton kernels in Triton's interpreter where there is no GPU, deselect GPU-only tests there, and
helpers the test files share."""
import os
import sys
import warnings

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Without CUDA the triton backend runs in Triton's interpreter (on CPU tensors). Triton reads the
# variable when a kernel is decorated, i.e. when dinat_backbone.ops.triton's kernels are first
# built, which happens after this. An explicit TRITON_INTERPRET (0 or 1) is left alone; on a GPU
# nothing is set.
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


def load_tool(name: str):
    """``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location(f"dinat_tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for the module (the pure-PyTorch op runs many tiny kernels; with busy cores,
    OpenMP spinning makes 2 threads far slower than 1), without the 'no compiled kernel' warning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*compiled CPU kernel.*")
        yield
    torch.set_num_threads(threads)
