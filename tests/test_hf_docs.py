"""The transformers snippets of README.md and docs/transformers.md, run as printed (read from the
pages by tests/test_readme.py's block lookup), printing what their comments say."""
import contextlib
import io

import pytest

import dinat_backbone.hf as hf

from test_readme import _source, block

pytestmark = pytest.mark.usefixtures("single_thread")


def run_block(name):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(block(name), _source(name), "exec"), {"__name__": "__main__"})
    finally:
        hf.disable()
    return out.getvalue().splitlines()


def test_docs_transformers_snippet_runs_as_printed():
    import transformers

    status, labels, attention = run_block("hf-transformers")
    assert status.startswith(f"dinat_backbone runs transformers {transformers.__version__}'s DiNAT: fused na2d")
    assert labels == "3"
    assert attention == "(1, 2, 56, 56, 49)"
    assert "# (1, 2, 56, 56, 49)" in block("hf-transformers") and "# 3 (labels" in block("hf-transformers")


def test_readme_transformers_snippet_runs_as_printed():
    (printed,) = run_block("hf")
    promised = block("hf").split("# ")[-1].strip()
    assert printed == promised == "[(64, 56, 80), (128, 28, 40), (256, 14, 20), (512, 7, 10)]"
