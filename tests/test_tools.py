"""tools/convert_checkpoint.py and tools/extract_features.py (torch only; no mm packages)."""
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image

from dinat_backbone import DiNAT, DiNAT_s, convert_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")


def _tool(name):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location(f"dinat_tools_{name}", os.path.join(TOOLS, f"{name}.py"))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(script, *args):
    """Run a tool's main(argv) in-process (a subprocess per call would re-import torch each time)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = _tool(os.path.splitext(os.path.basename(script))[0]).main(list(args))
    assert rc in (None, 0) or isinstance(rc, list), buf.getvalue()
    return buf.getvalue()


def _randomized(cls=DiNAT, **kw):
    torch.manual_seed(7)
    m = cls(**kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_convert_checkpoint_imagenet_to_native_and_mm(tmp_path):
    m = _randomized(arch="mini")
    native = m.state_dict()
    body = OrderedDict((k, v) for k, v in native.items() if not (k.startswith("norm") and k[4].isdigit()))
    imagenet = OrderedDict(body)
    imagenet["norm.weight"], imagenet["norm.bias"] = torch.ones(512), torch.zeros(512)
    imagenet["head.weight"], imagenet["head.bias"] = torch.randn(1000, 512), torch.zeros(1000)
    src = tmp_path / "dinat_mini_in1k_224.pth"
    torch.save(imagenet, src)

    out = _run(os.path.join(TOOLS, "convert_checkpoint.py"), str(src), str(tmp_path / "native.pth"),
               "--arch", "mini")
    assert "wrote" in out
    conv = torch.load(tmp_path / "native.pth", weights_only=True)
    assert set(conv) == set(body)
    assert all(torch.equal(conv[k], body[k]) for k in body)

    _run(os.path.join(TOOLS, "convert_checkpoint.py"), str(src), str(tmp_path / "mm.pth"), "--to", "mm")
    mm = torch.load(tmp_path / "mm.pth", weights_only=True)
    assert set(mm["state_dict"]) == {f"backbone.{k}" for k in body}
    # and the mm file converts back to the same weights
    back = convert_checkpoint(mm)
    assert all(torch.equal(back[k], body[k]) for k in body)


def test_convert_checkpoint_detector_round_trip_and_arch_check(tmp_path):
    m = _randomized(arch="mini")
    det = {"state_dict": OrderedDict([(f"backbone.{k}", v) for k, v in m.state_dict().items()]
                                     + [("neck.fpn_convs.0.conv.weight", torch.zeros(3))]), "meta": {}}
    torch.save(det, tmp_path / "det.pth")
    _run(os.path.join(TOOLS, "convert_checkpoint.py"), str(tmp_path / "det.pth"), str(tmp_path / "bb.pth"),
         "--arch", "mini")
    conv = torch.load(tmp_path / "bb.pth", weights_only=True)
    assert conv.keys() == m.state_dict().keys()
    # the wrong size is reported and fails
    proc = subprocess.run([sys.executable, os.path.join(TOOLS, "convert_checkpoint.py"), str(tmp_path / "det.pth"),
                           str(tmp_path / "x.pth"), "--arch", "small"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # once as a real command line: exit status and message
    assert proc.returncode != 0 and "does not match" in proc.stdout, proc.stdout + proc.stderr


@pytest.fixture()
def image(tmp_path):
    rng = np.random.RandomState(0)
    arr = (rng.rand(70, 90, 3) * 255).astype(np.uint8)  # odd, non-square, small
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    return path


def test_extract_features_pt_npz_and_vis(tmp_path, image):
    m = _randomized(arch="mini", dilations="in1k-224", drop_path_rate=0.0)
    ckpt = tmp_path / "w.pth"
    torch.save(m.state_dict(), ckpt)
    out = _run(os.path.join(TOOLS, "extract_features.py"), str(image), "--arch", "mini",
               "--checkpoint", str(ckpt), "--out", str(tmp_path / "f.pt"), "--vis", str(tmp_path / "stages.png"))
    assert "stride 32" in out
    feats = torch.load(tmp_path / "f.pt", weights_only=True)
    assert feats["strides"] == [4, 8, 16, 32]
    shapes = [tuple(feats[f"stage{i}"].shape) for i in range(1, 5)]
    assert shapes == [(64, 18, 23), (128, 9, 12), (256, 5, 6), (512, 3, 3)]
    # the saved maps are the model's outputs for the normalised image
    ef = _tool("extract_features")
    _, x = ef.load_image(str(image))
    m.eval()
    with torch.no_grad():
        ref = m(x)
    for i, r in enumerate(ref):
        torch.testing.assert_close(feats[f"stage{i + 1}"], r[0], rtol=1e-4, atol=1e-4)

    vis = Image.open(tmp_path / "stages.png")
    assert vis.mode == "RGB" and vis.width > 4 * vis.height  # input + 4 stage panels side by side
    arr = np.asarray(vis)
    assert arr.std() > 10  # not blank

    _run(os.path.join(TOOLS, "extract_features.py"), str(image), "--model", "nat", "--size", "48",
         "--out", str(tmp_path / "f.npz"))
    z = np.load(tmp_path / "f.npz")
    assert list(z["strides"]) == [4, 8, 16, 32] and z["stage1"].shape[0] == 64 and z["stage1"].shape[1] == 12


def test_pca_rgb_is_deterministic_and_full_range():
    ef = _tool("extract_features")
    f = torch.randn(32, 10, 12)
    a, b = ef.pca_rgb(f), ef.pca_rgb(f)
    assert a.shape == (10, 12, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert a.max() == 255 and a.min() == 0


# ----------------------------------------------------------------------------------------------
# --model dinat_s, and choices read from the families' tables
# ----------------------------------------------------------------------------------------------
def test_extract_features_dinat_s(tmp_path, image):
    m = _randomized(DiNAT_s, arch="tiny", dilations="in1k-224", drop_path_rate=0.0)
    ckpt = tmp_path / "dinat_s_tiny.pth"
    cls_sd = OrderedDict((k, v) for k, v in m.state_dict().items() if not (k.startswith("norm") and k[4].isdigit()))
    cls_sd["norm.weight"], cls_sd["norm.bias"] = torch.ones(768), torch.zeros(768)
    cls_sd["head.weight"], cls_sd["head.bias"] = torch.zeros(1000, 768), torch.zeros(1000)
    torch.save(cls_sd, ckpt)  # the authors' classifier layout
    out = _run(os.path.join(TOOLS, "extract_features.py"), str(image), "--model", "dinat_s",
               "--checkpoint", str(ckpt), "--out", str(tmp_path / "f.pt"))
    assert "stride 32" in out
    feats = torch.load(tmp_path / "f.pt", weights_only=True)
    # 70x90: ceil(/4) = 18x23, then ceil halvings (Swin pads odd sizes)
    assert [tuple(feats[f"stage{i}"].shape) for i in range(1, 5)] == [(96, 18, 23), (192, 9, 12), (384, 5, 6),
                                                                      (768, 3, 3)]
    _, x = _tool("extract_features").load_image(str(image))
    m.eval()
    with torch.no_grad():
        ref = m.patch_embed(x)
        for layer in m.layers[:1]:
            ref, _ = layer(ref)
    # the output norms are not in the classifier: compare the normalised stage-1 map up to its norm init
    torch.testing.assert_close(feats["stage1"], torch.nn.functional.layer_norm(ref, (96,))[0].permute(2, 0, 1),
                               rtol=1e-4, atol=1e-4)


def test_tool_choices_come_from_the_family_tables(capsys):
    from dinat_backbone import ARCH_SETTINGS, DILATION_PRESETS, MODEL_FAMILIES

    ef = _tool("extract_features")
    parser = ef.build_parser()
    actions = {a.dest: a for a in parser._actions}
    assert list(actions["model"].choices) == list(MODEL_FAMILIES)
    assert set(actions["arch"].choices) == set(ARCH_SETTINGS) | set(DiNAT_s.arch_settings)
    assert set(actions["dilations"].choices) == set(DILATION_PRESETS) | set(DiNAT_s.dilation_presets) | {"none"}
    for argv, message in [
            (["--model", "dinat_s", "--arch", "mini"], "--arch mini: dinat_s has tiny, small, base, large"),
            (["--model", "dinat", "--dilations", "in1k-384"], "--dilations in1k-384: dinat has in1k-224")]:
        with pytest.raises(SystemExit) as info:
            ef.main(["img.png", *argv])
        assert info.value.code == 2 and message in capsys.readouterr().err
    eo = _tool("export_onnx")
    args = eo.parse_args(["--model", "dinat_s", "--dilations", "coco"])
    assert args.model_cls is DiNAT_s and args.model_kwargs == {"arch": "tiny", "dilations": "coco"}
    with torch.device("meta"):
        model = eo.build_model(args)
    assert isinstance(model, DiNAT_s) and model.dilations[0] == [1, 28]
    args = eo.parse_args(["--nat", "--arch", "small"])
    assert args.model_cls is MODEL_FAMILIES["nat"] and args.model_kwargs == {"arch": "small"}
    assert eo.parse_args([]).model_kwargs == {"arch": "mini"}  # unchanged default: DiNAT-mini, all dilations 1


def test_convert_checkpoint_dinat_s_detects_the_family(tmp_path):
    m = _randomized(DiNAT_s, arch="tiny", depths=(1, 1, 1, 1))
    det = {"state_dict": OrderedDict([(f"backbone.{k}", v) for k, v in m.state_dict().items()]
                                     + [("neck.fpn_convs.0.conv.weight", torch.zeros(3))]), "meta": {}}
    torch.save(det, tmp_path / "det_s.pth")
    out = _run(os.path.join(TOOLS, "convert_checkpoint.py"), str(tmp_path / "det_s.pth"), str(tmp_path / "bb.pth"))
    assert "DiNAT_s layout" in out
    conv = torch.load(tmp_path / "bb.pth", weights_only=True)
    assert conv.keys() == m.state_dict().keys()
    # --arch checks against the family of the file; tiny has depths (2, 2, 6, 2): the missing blocks are reported
    import contextlib
    import io

    tool = _tool("convert_checkpoint")
    for argv, text in [
            (["--arch", "tiny"], "does not match dinat_s-tiny"),
            (["--model", "dinat", "--arch", "mini"], "is a DiNAT_s checkpoint, not dinat: use --model dinat_s")]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = tool.main([str(tmp_path / "det_s.pth"), str(tmp_path / "x.pth"), *argv])
        assert rc == 1 and text in buf.getvalue(), buf.getvalue()
