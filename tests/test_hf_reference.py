"""What transformers computed on NATTEN <= 0.17.4, as the reference of dinat_backbone.hf.

transformers 5.x's own DiNAT forward fails with any natten (its head split is wrong for the 5-D
layout), so the reference is transformers 4.46.3's forward on natten-mps's old-API ops, run in a
subprocess from the copy tools/install.sh keeps in DINAT_HF_REFERENCE_DIR (default
``~/.cache/dinat-backbone/transformers-4.46.3-pyXY``). Against it: the bridge on the installed
transformers, the bridge on 4.46.3, and this package's DiNAT. Then what ``enable()`` does when a
natten is installed, with natten-mps standing in for natten 0.17.4 under the name ``natten`` (a
package directory on PYTHONPATH: NATTEN <= 0.17.4 has no wheels for this torch), and for a
natten >= 0.17.5 without the two functions.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dinat_backbone.hf as hf
from dinat_backbone import DiNAT, convert_checkpoint

from conftest import perturb_

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("hf_reference_run.py")
CONFIG = dict(embed_dim=16, depths=[2, 1, 1, 1], num_heads=[1, 2, 2, 4], kernel_size=5,
              dilations=[[1, 4], [3], [2], [1]], mlp_ratio=2.0, layer_scale_init_value=0.5, drop_path_rate=0.0)
STAGES = ["stem", "stage1", "stage2", "stage3", "stage4"]


def reference_dir() -> Path:
    python = f"py{sys.version_info[0]}{sys.version_info[1]}"
    default = Path.home() / ".cache" / "dinat-backbone" / f"transformers-4.46.3-{python}"
    path = Path(os.environ.get("DINAT_HF_REFERENCE_DIR", default))
    if not (path / "transformers" / "models" / "dinat" / "modeling_dinat.py").is_file():
        pytest.fail(f"no transformers 4.46.3 reference copy in {path}: run `bash tools/install.sh` (it installs one "
                    "with pip install --target), or point DINAT_HF_REFERENCE_DIR at one")
    return path


def run(mode, cases, tmp_path, *pythonpath, tag=""):
    cases_path, out_path = tmp_path / "cases.pt", tmp_path / f"out-{mode}{tag}.pt"
    torch.save(cases, cases_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, pythonpath), str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(RUNNER), mode, str(cases_path), str(out_path)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out_path, weights_only=False)


@pytest.fixture(scope="module")
def cases():
    """A DinatBackbone at a size that needs padding and one that does not, and a DinatModel with its
    attention weights; perturbed weights, built with the installed transformers."""
    status = hf.enable()
    assert status.runs == "dinat_backbone"
    import transformers.models.dinat.modeling_dinat as md

    made = []
    for i, (cls, size, output_attentions) in enumerate([("DinatBackbone", (37, 45), False),
                                                        ("DinatBackbone", (160, 224), False),
                                                        ("DinatModel", (40, 52), True)]):
        config = dict(CONFIG, out_features=STAGES) if cls == "DinatBackbone" else dict(CONFIG)
        model = perturb_(getattr(md, cls)(md.DinatConfig(**config)), seed=i).eval()
        made.append(dict(cls=cls, config=config, state_dict=model.state_dict(), x=torch.randn(2, 3, *size),
                         output_attentions=output_attentions))
    yield made
    hf.disable()


def assert_same_outputs(results, expected, atol=1e-5):
    for got, want in zip(results, expected):
        for name in ("feature_maps", "attentions"):
            if want[name] is not None:
                assert len(got[name]) == len(want[name])
                for a, b in zip(got[name], want[name]):
                    torch.testing.assert_close(a, b, rtol=0, atol=atol)
        if want["last_hidden_state"] is not None:
            torch.testing.assert_close(got["last_hidden_state"], want["last_hidden_state"], rtol=0, atol=atol)


@pytest.fixture(scope="module")
def reference(cases, tmp_path_factory):
    out = run("natten-mps", cases, tmp_path_factory.mktemp("ref"), reference_dir())
    assert out["transformers"] == "4.46.3"
    return out["results"]


def test_bridge_on_installed_transformers_matches_4_46_3_on_old_natten_ops(cases, reference, tmp_path):
    import transformers

    out = run("bridge", cases, tmp_path)
    assert out["transformers"] == transformers.__version__
    assert_same_outputs(out["results"], reference)


def test_bridge_on_4_46_3_matches_4_46_3_on_old_natten_ops(cases, reference, tmp_path):
    out = run("bridge", cases, tmp_path, reference_dir())
    assert out["transformers"] == "4.46.3" and out["status"]["runs"] == "dinat_backbone"
    assert not out["status"]["natten_version"]
    assert_same_outputs(out["results"], reference)


def test_native_dinat_matches_4_46_3_on_old_natten_ops(cases, reference):
    for case, ref in zip(cases[:2], reference[:2]):
        model = DiNAT(embed_dim=16, depths=(2, 1, 1, 1), num_heads=(1, 2, 2, 4), mlp_ratio=2.0, kernel_size=5,
                      dilations=CONFIG["dilations"], layer_scale=0.5, drop_path_rate=0.0, out_features=STAGES).eval()
        model.load_state_dict(convert_checkpoint(case["state_dict"]), strict=True)
        with torch.no_grad():
            for a, b in zip(model(case["x"]), ref["feature_maps"]):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def natten_stand_in(root: Path, version: str, old_ops: bool) -> Path:
    """A ``natten`` package directory (with dist-info, which transformers' availability check reads):
    natten-mps's old-API ops under NATTEN 0.17.4's names, or (``old_ops=False``) a natten >= 0.17.5
    whose ``natten.functional`` has no natten2dqkrpb / natten2dav."""
    package = root / "natten"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n")
    functional = ("from natten_mps.compat.v014 import natten2dav, natten2dqkrpb  # noqa: F401\n" if old_ops
                  else "from natten_mps.functional import na2d  # noqa: F401\n")
    (package / "functional.py").write_text(functional)
    info = root / f"natten-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: natten\nVersion: {version}\n")
    return root


@pytest.mark.parametrize("transformers_copy", ["installed", "4.46.3"])
def test_an_installed_old_natten_is_left_to_run_unless_replaced(cases, reference, tmp_path, transformers_copy):
    natten = natten_stand_in(tmp_path / "natten-0.17.4", "0.17.4", old_ops=True)
    paths = [natten] + ([reference_dir()] if transformers_copy == "4.46.3" else [])
    left = run("bridge", cases, tmp_path, *paths)
    status = left["status"]
    assert status["runs"] == "natten" and status["natten_version"] == "0.17.4"
    assert "natten 0.17.4 runs" in status["description"] and "replace=True" in status["description"]
    # transformers 4.x's forward runs untouched; 5.x's (which mislays the heads) is replaced, natten's ops kept
    assert status["forward_replaced"] == (left["transformers"] != "4.46.3")
    assert_same_outputs(left["results"], reference)
    replaced = run("bridge-replace", cases, tmp_path, *paths, tag="-replace")
    assert replaced["status"]["runs"] == "dinat_backbone" and "replacing natten 0.17.4" in replaced["status"][
        "description"]
    assert_same_outputs(replaced["results"], reference)


def test_a_new_natten_without_the_old_ops_is_bridged(cases, reference, tmp_path):
    natten = natten_stand_in(tmp_path / "natten-0.21.0", "0.21.0", old_ops=False)
    out = run("bridge", cases, tmp_path, natten, reference_dir())
    assert out["status"]["runs"] == "dinat_backbone" and out["status"]["natten_version"] == "0.21.0"
    assert_same_outputs(out["results"], reference)
