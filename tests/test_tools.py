"""The torch-only tools (convert_checkpoint, extract_features, export_onnx, the benchmarks' reporting) and
the shell scripts' usage handling; no mm packages."""
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image

from dinat_backbone import DiNAT, DiNAT_s, convert_checkpoint

from conftest import ROOT, TOOLS, load_tool, perturb_


def _run(script, *args):
    """Run a tool's main(argv) in-process (a subprocess per call would re-import torch each time)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = load_tool(os.path.splitext(os.path.basename(script))[0]).main(list(args))
    assert rc in (None, 0) or isinstance(rc, list), buf.getvalue()
    return buf.getvalue()


def _randomized(cls=DiNAT, **kw):
    torch.manual_seed(7)
    return perturb_(cls(**kw))


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
    ef = load_tool("extract_features")
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
    ef = load_tool("extract_features")
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
    _, x = load_tool("extract_features").load_image(str(image))
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

    ef = load_tool("extract_features")
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
    eo = load_tool("export_onnx")
    args = eo.parse_args(["--model", "dinat_s", "--dilations", "coco"])
    assert args.model_cls is DiNAT_s and args.model_kwargs == {"arch": "tiny", "dilations": "coco"}
    with torch.device("meta"):
        model = eo.build_model(args)
    assert isinstance(model, DiNAT_s) and model.dilations[0] == [1, 28]
    args = eo.parse_args(["--nat", "--arch", "small"])
    assert args.model_cls is MODEL_FAMILIES["nat"] and args.model_kwargs == {"arch": "small"}
    # the default is a real DiNAT: mini with its ImageNet dilations, not NAT's all-1 (issue 15)
    assert eo.parse_args([]).model_kwargs == {"arch": "mini", "dilations": "in1k-224"}
    with torch.device("meta"):
        default = eo.build_model(eo.parse_args([]))
    assert default.dilations[0] == [1, 8, 1] and any(d != 1 for stage in default.dilations for d in stage)
    assert eo.parse_args(["--dilations", "none"]).model_kwargs == {"arch": "mini"}


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

    tool = load_tool("convert_checkpoint")
    for argv, text in [
            (["--arch", "tiny"], "does not match dinat_s-tiny"),
            (["--model", "dinat", "--arch", "mini"], "is a DiNAT_s checkpoint, not dinat: use --model dinat_s")]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = tool.main([str(tmp_path / "det_s.pth"), str(tmp_path / "x.pth"), *argv])
        assert rc == 1 and text in buf.getvalue(), buf.getvalue()


# ----------------------------------------------------------------------------------------------
# issue 15: the tools as a new user meets them
# ----------------------------------------------------------------------------------------------
def test_extract_features_warns_about_random_weights_and_checks_paths(tmp_path, image, capsys):
    ef = load_tool("extract_features")
    ef.main([str(image), "--arch", "mini", "--size", "40"])
    err = capsys.readouterr().err
    assert "no --checkpoint given: the backbone has RANDOM weights" in err, err
    m = _randomized(arch="mini", dilations="in1k-224", drop_path_rate=0.0)
    torch.save(m.state_dict(), tmp_path / "w.pth")
    ef.main([str(image), "--size", "40", "--checkpoint", str(tmp_path / "w.pth")])
    assert "RANDOM" not in capsys.readouterr().err
    for argv, message in [
            (["--out", str(tmp_path / "f.txt")], "use a .pt / .pth file"),
            (["--vis", str(tmp_path / "stages")], "give an image file name"),
            (["--checkpoint", str(tmp_path / "nope.pth")], "file not found"),
    ]:
        with pytest.raises(SystemExit) as info:
            ef.main([str(image), *argv])
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "f.txt").exists()
    with pytest.raises(SystemExit):
        ef.main([str(tmp_path / "missing.png")])
    assert "image not found" in capsys.readouterr().err
    # .pth is a torch file like .pt
    ef.main([str(image), "--size", "40", "--checkpoint", str(tmp_path / "w.pth"), "--out", str(tmp_path / "f.pth")])
    assert torch.load(tmp_path / "f.pth", weights_only=True)["strides"] == [4, 8, 16, 32]


def test_extract_features_labels_are_c_by_h_by_w():
    ef = load_tool("extract_features")
    img = Image.new("RGB", (90, 70))  # PIL size is (W, H): a 70-high, 90-wide image
    labels = ef.panel_labels(img, [torch.zeros(64, 18, 23), torch.zeros(128, 9, 12)], [4, 8])
    assert labels == ["input: 3x70x90", "stride 4: 64x18x23", "stride 8: 128x9x12"]


def test_export_progress_shows_the_exporter_phases(capsys):
    """The exporter's phase lines come through as they happen (with a periodic 'still working')
    and the rest of its chatter does not."""
    import time as _time

    eo = load_tool("export_onnx")

    def exporter():
        print("[torch.onnx] Translate the graph into ONNX...")
        print("some exporter chatter")
        _time.sleep(0.3)
        print("[torch.onnx] Translate the graph into ONNX... \u2705")

    import contextlib
    import sys as _sys

    with eo._Progress(_sys.stdout, interval=0.1) as progress, contextlib.redirect_stdout(progress):
        exporter()
    out = capsys.readouterr().out
    assert "] Translate the graph into ONNX...\n" in out
    assert "still working: Translate the graph into ONNX" in out
    assert "Translate the graph into ONNX... done" in out
    assert "chatter" not in out and "chatter" in progress.kept.getvalue()


def test_export_prints_the_real_exporters_phases(tmp_path, capsys):
    """Against torch's own exporter: its phase lines (printed with verbose=True) reach the user."""
    eo = load_tool("export_onnx")
    model = DiNAT(arch="mini", depths=(1, 1, 1, 1), dilations=[[4], [2], [1], [1]], drop_path_rate=0.0).eval()
    eo.export(model, torch.randn(1, 3, 64, 64), str(tmp_path / "m.onnx"))
    out = capsys.readouterr().out
    for phase in ("Obtain model graph", "Translate the graph into ONNX", "Optimize the ONNX graph"):
        assert f"{phase}" in out and "[export +" in out, out
    assert "done" in out


def _benchmark_results(tiny_mem_cut=0.396):
    swin = {"fwd_med": 1.0, "fwdbwd_med": 1.0, "mem_fwdbwd": 1000.0}
    return {"swin": swin,
            "tiny": {"fwd_med": 0.996, "fwdbwd_med": 1.104, "mem_fwdbwd": 1000.0},
            "mini": {"fwd_med": 0.996, "fwdbwd_med": 0.5, "mem_fwdbwd": 500.0},
            "tiny_cp": {"mem_fwdbwd": 1000.0 * (1 - tiny_mem_cut)}}


def test_benchmark_verdicts_agree_with_the_figures_shown():
    bm = load_tool("benchmark")
    # the figure printed is the one judged: 39.6 % prints as 40 % and meets >= 40 %
    assert bm.verdict("cut", 39.6, 40, "≥", digits=0, unit=" %") == "  [PASS] cut: 40 % (target ≥ 40 %)"
    assert bm.verdict("cut", 39.4, 40, "≥", digits=0, unit=" %") == "  [FAIL] cut: 39 % (target ≥ 40 %)"
    assert bm.verdict("r", 0.996, 1.0, "<") == "  [FAIL] r: 1.00 (target < 1.0)"
    assert bm.verdict("r", 1.004, 1.0, "≤") == "  [PASS] r: 1.00 (target ≤ 1.0)"
    args = bm.parse_args([])
    lines = bm.targets([bm.DEFAULT_SHAPES[0]], [_benchmark_results()], args)
    import re

    for line in lines:
        m = re.match(r"  \[(PASS|FAIL)\] .*: ([0-9.]+)(?: %)? \(target (<|≤|≥) ([0-9.]+)", line)
        assert m, line
        shown, limit = float(m.group(2)), float(m.group(4))
        ok = {"<": shown < limit, "≤": shown <= limit, "≥": shown >= limit}[m.group(3)]
        assert (m.group(1) == "PASS") == ok, line


def test_benchmark_quick_does_not_judge_and_skips_swin_compile():
    bm = load_tool("benchmark")
    args = bm.parse_args(["--quick"])
    assert args.compile == ["tiny"] and bm.parse_args([]).compile == ["tiny", "swin"]
    assert bm.parse_args(["--quick", "--compile", "tiny", "swin"]).compile == ["tiny", "swin"]
    lines = bm.targets(args.shapes, [_benchmark_results(), _benchmark_results()], args)
    text = "\n".join(lines)
    assert "PASS" not in text and "FAIL" not in text, text
    assert text.count("not judged at") == 2 and "--quick" in text and "[info]" in text
    # a shape the targets are not defined for is not judged either, even without --quick
    args = bm.parse_args(["--shape", "coco", "1", "224", "320", "coco"])
    text = "\n".join(bm.targets(args.shapes, [_benchmark_results()], args))
    assert "PASS" not in text and "FAIL" not in text and "is not a target shape" in text
    gpu = "\n".join(bm.gpu_targets(args.shapes, [_benchmark_results()], torch.bfloat16, args))
    assert "[info]" in gpu and "PASS" not in gpu


def test_benchmark_na_quick_says_its_percentages_are_not_the_readmes(capsys):
    bna = load_tool("benchmark_na")
    bna.main(["--quick", "--backends", "none"])  # no op timed: the GEMM ceilings and the table only
    out = capsys.readouterr().out
    assert bna.QUICK_NOTE in out and "not comparable with its percentages" in out
    rows = [line for line in out.splitlines() if line.startswith("(1, ")]
    assert rows and all(line.rstrip().endswith(" -") for line in rows), rows
    assert "goal = meets" not in out


def test_benchmark_na_bf16_speedups_also_come_from_alternating_repetitions(capsys):
    """The compiled kernel's bfloat16 / float32 speed-up is also measured with the two dtypes
    alternating (medians), and printed beside the best-vs-best ratio."""
    from dinat_backbone import ops

    bna = load_tool("benchmark_na")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 9, 10, 2, 8, generator=g) for _ in range(3))
    rpb = torch.randn(2, 5, 5, generator=g)
    fn = lambda q, k, v, rpb: ops.na2d(q, k, v, 3, 2, rpb, backend="cpu")  # noqa: E731
    speedups = bna.alternating_speedups(fn, (q, k, v, rpb), (q.bfloat16(), k.bfloat16(), v.bfloat16(), rpb), 3)
    assert set(speedups) == {"fwd", "fwd+bwd"} and all(0 < x < float("inf") for x in speedups.values())
    assert all(t.grad is None for t in (q, k, v, rpb))  # the caller's tensors are left alone
    f32 = {"fwd": (2.0, 2.1), "fwd+bwd": (6.0, 6.3)}
    bf16 = {"fwd": (1.0, 1.1), "fwd+bwd": (3.0, 3.2), "alternating": {"fwd": 1.7, "fwd+bwd": 1.9}}
    conversion = {"fwd": (1.6, 1.7), "fwd+bwd": (4.0, 4.1)}
    bna.print_bf16_speedups([("s", "na2d backend=cpu (compiled kernel)", 1, 1, f32),
                             ("s", "na2d backend=cpu bfloat16 (avx512bf16, bf16 products)", 1, 1, bf16),
                             ("s", "na2d backend=cpu bfloat16 (avx512, conversion path)", 1, 1, conversion)])
    out = capsys.readouterr().out
    assert "medians of alternating repetitions" in out
    assert "fwd 2.00x / 1.70x (target ≥ 1.6x), fwd+bwd 2.00x / 1.90x (target ≥ 1.4x)" in out, out
    assert "fwd 1.25x (target ≥ 1.6x), fwd+bwd 1.50x (target ≥ 1.4x)" in out, out


def _bash(script, *args, env=None):
    return subprocess.run(["bash", os.path.join(TOOLS, script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("script,needs", [("dist_train.sh", "CONFIG and NPROC_PER_NODE"),
                                          ("dist_test.sh", "CONFIG, CHECKPOINT and NPROC_PER_NODE"),
                                          ("slurm_train.sh", "PARTITION, JOB_NAME, CONFIG and WORK_DIR")])
def test_launch_scripts_print_usage(script, needs):
    for flag in ("--help", "-h"):
        proc = _bash(script, flag)
        assert proc.returncode == 0 and proc.stdout.startswith("usage: ") and script in proc.stdout, proc
    proc = _bash(script)
    assert proc.returncode == 2 and f"needs {needs}" in proc.stderr and "usage:" in proc.stderr, proc
    assert "unbound variable" not in proc.stderr


def test_launch_scripts_check_their_arguments(tmp_path):
    cfg = os.path.join(ROOT, "configs", "toy", "upernet_dinat-toy_toy-ade.py")
    proc = _bash("dist_train.sh", cfg, "two")
    assert proc.returncode == 2 and "NPROC_PER_NODE must be a positive integer, got 'two'" in proc.stderr
    proc = _bash("dist_train.sh", "nope.py", "2")
    assert proc.returncode == 2 and "config file not found: nope.py" in proc.stderr
    proc = _bash("dist_test.sh", cfg, str(tmp_path / "none.pth"), "1")
    assert proc.returncode == 2 and "file not found: " + str(tmp_path / "none.pth") in proc.stderr
    # without Slurm (no srun on PATH): say so and point to dist_train.sh
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = subprocess.run(["/bin/bash", os.path.join(TOOLS, "slurm_train.sh"), "p", "job", cfg, str(tmp_path / "w")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PATH": str(empty)})
    assert proc.returncode == 2 and "srun not found on PATH" in proc.stderr and "dist_train.sh" in proc.stderr, proc
    assert "command not found" not in proc.stderr


def _install_run(tmp_path, **env):
    """tools/install.sh with a python whose pip only records its arguments (every other python call is
    the real interpreter, so the script's checks see the real installation)."""
    log = tmp_path / "pip.log"
    fake = tmp_path / "python"
    fake.write_text(f"""#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$*" >> {log}; exit 0; fi
exec {sys.executable} "$@"
""")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", os.path.join(TOOLS, "install.sh")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHON": str(fake), **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, (log.read_text() if log.exists() else "")


def test_install_skip_mm_installs_the_core_only(tmp_path):
    out, pip_calls = _install_run(tmp_path, SKIP_MM="1")
    assert "Pillow" in out  # extract_features' image I/O, installed explicitly
    for not_core in ("mmengine", "mmcv", "mmdet", "test and tooling", "pytest", "onnx", "triton"):
        assert not_core not in out and not_core not in pip_calls, (not_core, out, pip_calls)
    assert "done in" in out


# ----------------------------------------------------------------------------------------------
# tools/train.py and tools/test.py: paths checked first, --show-dir (these need mmengine / mmdet /
# mmseg: the rest of this file does not)
# ----------------------------------------------------------------------------------------------
TOY_DET = os.path.join(ROOT, "configs", "toy", "mask-rcnn_dinat-toy_fpn_toy-coco.py")
TOY_SEG = os.path.join(ROOT, "configs", "toy", "upernet_dinat-toy_toy-ade.py")
COCO_CFG = os.path.join(ROOT, "configs", "dinat", "mask-rcnn_dinat-tiny_fpn_3x_coco.py")
ADE_CFG = os.path.join(ROOT, "configs", "dinat", "upernet_dinat-tiny_512x512_160k_ade20k.py")


def _exit_message(tool, argv):
    with pytest.raises(SystemExit) as info:
        tool.main(argv)
    return str(info.value.code)


def test_train_and_test_name_a_missing_config_or_checkpoint(tmp_path):
    train, test = load_tool("train"), load_tool("test")
    assert _exit_message(train, [str(tmp_path / "nope.py")]) == f"tools/train.py: config not found: {tmp_path}/nope.py"
    assert "--resume checkpoint not found" in _exit_message(train, [TOY_DET, "--resume", str(tmp_path / "x.pth")])
    assert _exit_message(test, [str(tmp_path / "nope.py"), "c.pth"]).startswith("tools/test.py: config not found")
    assert _exit_message(test, [TOY_DET, str(tmp_path / "c.pth")]) == \
        f"tools/test.py: checkpoint not found: {tmp_path}/c.pth"
    assert "a folder: give the file inside it" in _exit_message(test, [TOY_DET, str(tmp_path)])


def test_missing_dataset_is_named_with_the_keys_to_override(tmp_path, monkeypatch):
    """The paper configs read data/coco and data/ade: without them (the working directory is an
    empty folder here) the tools stop before building anything, naming the paths and the fix."""
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"")  # only its existence is checked before the data paths
    msg = _exit_message(load_tool("test"), [COCO_CFG, str(ckpt)])
    assert "missing test_dataloader.dataset.data_root: data/coco/" in msg, msg
    assert "missing test_evaluator.ann_file: data/coco/annotations/instances_val2017.json" in msg
    assert "ln -s /path/to/coco data/coco" in msg
    assert "--cfg-options test_dataloader.dataset.data_root=/path/to/coco/ " \
           "test_evaluator.ann_file=/path/to/coco/annotations/instances_val2017.json" in msg
    msg = _exit_message(load_tool("train"), [ADE_CFG])
    assert "missing train_dataloader.dataset.data_root: data/ade/ADEChallengeData2016" in msg
    assert "val_dataloader.dataset.data_root=/path/to/ADEChallengeData2016/" in msg
    # with the data in place nothing is missing: a dataset laid out as the README says passes
    for sub in ("annotations", "train2017", "val2017"):
        (tmp_path / "data" / "coco" / sub).mkdir(parents=True)
    for name in ("instances_train2017.json", "instances_val2017.json"):
        (tmp_path / "data" / "coco" / "annotations" / name).write_text("{}")
    from mmengine.config import Config

    cfg = Config.fromfile(COCO_CFG)
    assert load_tool("_common").missing_data_paths(cfg, ("train", "val", "test")) == []


def _random_checkpoint(config, path):
    """A checkpoint of the config's model at its random init, in mmengine's layout."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    registry = __import__(f"{cfg.default_scope}.registry", fromlist=["MODELS"]).MODELS
    torch.manual_seed(0)
    torch.save({"state_dict": registry.build(cfg.model).state_dict(), "meta": {}}, path)


@pytest.mark.parametrize("config", [TOY_DET, TOY_SEG], ids=["mmdet", "mmseg"])
def test_show_dir_keeps_the_libraries_layout_and_names(tmp_path, capsys, monkeypatch, config):
    roots = load_tool("make_toy_data").ensure(quiet=True)
    ckpt = tmp_path / "random.pth"
    _random_checkpoint(config, ckpt)
    work = tmp_path / "work"
    monkeypatch.chdir(tmp_path)  # --show-dir vis is relative: mmseg puts it under the working directory
    load_tool("test").main([config, str(ckpt), "--work-dir", str(work), "--show-dir", "vis",
                        "--cfg-options", f"visualizer.name=vis_{os.path.basename(config)}"])
    out = capsys.readouterr().out
    if "mask-rcnn" in config:
        sources = sorted(os.listdir(os.path.join(roots["coco"], "val")))
        runs = [d for d in os.listdir(work) if d[:1].isdigit()]
        folder = work / runs[0] / "vis"  # mmdet: WORK_DIR/TIMESTAMP/DIR/<source name>
        assert sorted(os.listdir(folder)) == sources
    else:
        sources = sorted(os.listdir(os.path.join(roots["ade"], "images", "validation")))
        folder = tmp_path / "vis" / "vis_data" / "vis_image"  # mmseg: DIR/vis_data/vis_image/test_<name>_0.png
        assert sorted(os.listdir(folder)) == sorted(f"test_{name}_0.png" for name in sources)
    assert f"[test] painted predictions: {len(sources)} images in " in out, out
    assert os.path.samefile(out.split(f"{len(sources)} images in ")[1].split("\n")[0], folder)


def test_benchmark_gelu_quick_times_both_paths(capsys):
    """tools/benchmark_gelu.py --quick: one row per shape, both timings positive."""
    rows = load_tool("benchmark_gelu").main(["--quick"])
    assert len(rows) == 2 and all(a > 0 and b > 0 for _, _, a, b in rows)
    assert "dinat::gelu_backward" in capsys.readouterr().out


def test_benchmark_layer_norm_quick_times_both_paths(capsys):
    """tools/benchmark_layer_norm.py --quick: one row per shape, ATen and kernel timings positive for
    the forward, the add + forward and the backward."""
    rows = load_tool("benchmark_layer_norm").main(["--quick"])
    assert len(rows) == 2
    assert all(a > 0 and k > 0 for row in rows for a, k in (row["fwd"], row["add"], row["bwd"]))
    assert "add + forward" in capsys.readouterr().out
