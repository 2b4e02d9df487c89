"""Shared test setup: make the package importable from a plain checkout (no install needed), and
helpers the test files share."""
import os
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


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
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*compiled CPU kernel.*")
        yield
    torch.set_num_threads(threads)
