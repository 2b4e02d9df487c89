"""Shared test setup: make the package importable from a plain checkout (no install needed), run the
Triton kernels in Triton's interpreter where there is no GPU, deselect GPU-only tests there, fail
every skipped test, and helpers the test files share."""
import os
import sys
import warnings

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
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


_NO_SKIPS = ("this suite allows no skipped tests: install what it needs (bash tools/install.sh) or, for a "
             "GPU-only test, mark it @pytest.mark.cuda")


def _skip_reason(report) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skipped test is a failed one: a missing dependency or an unbuilt kernel must fail CI, not
    pass it as "2 skipped" (GPU-only tests are deselected by their ``cuda`` marker above instead).
    Covers ``pytest.skip``, ``importorskip``, ``skipif`` / ``skip`` markers; ``xfail`` is left alone."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} was skipped ({_skip_reason(report)}); {_NO_SKIPS}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped while it is collected (``importorskip`` at the top)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} was skipped ({_skip_reason(report)}); {_NO_SKIPS}"


def load_tool(name: str):
    """``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location(f"dinat_tools_{name}", os.path.join(TOOLS, f"{name}.py"))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A 4-stage DiNAT-layout model small enough for the pure-PyTorch op (every test file's small model)
SMALL_MODEL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), mlp_ratio=2.0, kernel_size=5,
                   dilations=[[1, 4], [1, 3], [1, 2], [1, 1]], drop_path_rate=0.0)


def perturb_(model, scale=0.05, seed=None):
    """Move every parameter off its init, in place (LayerNorms would otherwise be identities and
    zero biases would hide padding errors); ``seed`` seeds torch first."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def small_model(cls=None, seed=None, perturb=False, **kwargs):
    """``cls(**SMALL_MODEL, **kwargs)`` (DiNAT by default), built after ``torch.manual_seed(seed)``
    when a seed is given, with its parameters perturbed when ``perturb``."""
    if cls is None:
        from dinat_backbone import DiNAT as cls
    if seed is not None:
        torch.manual_seed(seed)
    model = cls(**dict(SMALL_MODEL, **kwargs))
    return perturb_(model) if perturb else model


def mm_models(scope: str):
    """The ``MODELS`` registry of ``scope`` ('mmdet' / 'mmseg'), made the default scope (what a
    config's ``default_scope`` does in the Runner); mm imported here, as in :func:`seg_batch`."""
    from mmengine.registry import init_default_scope

    init_default_scope(scope)
    if scope == "mmdet":
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS


def seg_batch(num_classes, size=64):
    """Two random images with random semantic labels as mmseg ``SegDataSample``s (mm imported here,
    so the core tests need torch only)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(2, 3, size, size, generator=g)
    samples = []
    for _ in range(2):
        s = SegDataSample()
        s.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                            scale_factor=(1.0, 1.0), flip=False))
        s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, size, size), generator=g))
        samples.append(s)
    return inputs, samples


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
