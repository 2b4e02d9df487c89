"""Reliability of the tools (issue 20): outputs never destroy inputs and appear complete or not at
all, the toy data is safe under concurrent runs and never deletes what it did not write, tool
inputs are checked before the work, and torch.compile(dynamic=True) holds at batch >= 2."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from dinat_backbone import DiNAT

from conftest import ROOT, TOOLS, load_tool

sys.path.insert(0, TOOLS)
import _outputs  # noqa: E402


def _tool_error(capsys, tool, *argv):
    """Run ``tool``'s main(argv) expecting a usage error; returns its message (stderr + exit text)."""
    with pytest.raises(SystemExit) as exc:
        load_tool(tool).main(list(argv))
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    return err + ("" if isinstance(exc.value.code, int) else str(exc.value.code))


def _small_checkpoint(path):
    torch.manual_seed(0)
    torch.save(DiNAT(arch="mini").state_dict(), path)
    return path


@pytest.fixture
def photo(tmp_path):
    rng = np.random.RandomState(0)
    path = tmp_path / "photo.png"
    Image.fromarray((rng.rand(40, 52, 3) * 255).astype(np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------------
# data loss: an output is never an input, and appears complete or not at all
# ------------------------------------------------------------------------------------------------
def _links(tmp_path, target):
    """Other names of ``target``: the same path spelled differently, a symlink, a hard link."""
    sym = tmp_path / "sym_link"
    sym.symlink_to(target)
    hard = tmp_path / "hard_link"
    os.link(target, hard)
    return [str(target), os.path.join(str(tmp_path), ".", os.path.basename(target)), str(sym), str(hard)]


def test_convert_checkpoint_refuses_dst_equal_to_src_in_every_spelling(tmp_path, capsys):
    src = _small_checkpoint(tmp_path / "detector.pth")
    before = src.read_bytes()
    for dst in _links(tmp_path, src):
        err = _tool_error(capsys, "convert_checkpoint", str(src), dst)
        assert "DST" in err and "source checkpoint" in err and "another output path" in err, err
        assert src.read_bytes() == before


def test_convert_checkpoint_checks_dst_before_reading_src(tmp_path, capsys):
    # a source that cannot even be loaded: the DST problem is reported first, so nothing was loaded
    src = tmp_path / "src.pth"
    src.write_text("not a checkpoint")
    (tmp_path / "a_file").write_text("x")
    for dst, expected in ((tmp_path, "is a folder"),
                          (tmp_path / "missing" / "out.pth", "mkdir -p"),
                          (tmp_path / "a_file" / "out.pth", "is a file, not a folder"),
                          ("/proc/out.pth", "cannot be written")):
        err = _tool_error(capsys, "convert_checkpoint", str(src), str(dst))
        assert f"DST {dst}" in err and expected in err, err


def test_convert_checkpoint_replaces_an_existing_dst_atomically(tmp_path):
    src = _small_checkpoint(tmp_path / "in.pth")
    dst = tmp_path / "out.pth"
    dst.write_text("old")
    assert load_tool("convert_checkpoint").main([str(src), str(dst)]) == 0
    assert set(torch.load(dst, weights_only=True)) == set(torch.load(src, weights_only=True))
    assert sorted(os.listdir(tmp_path)) == ["in.pth", "out.pth"]  # no temporaries left behind


def test_extract_features_refuses_outputs_that_are_inputs(tmp_path, photo, capsys):
    ckpt = _small_checkpoint(tmp_path / "w.pth")
    photo_bytes, ckpt_bytes = photo.read_bytes(), ckpt.read_bytes()
    cases = [(["--vis", str(photo)], "--vis", "input image"),
             (["--vis", str(tmp_path / "." / "photo.png")], "--vis", "input image"),
             (["--out", str(ckpt.with_suffix(".pth")), "--checkpoint", str(ckpt)], "--out", "--checkpoint"),
             (["--out", str(tmp_path / "f.pt"), "--vis", str(tmp_path / "v.png")], "--vis", "also --out")]
    (tmp_path / "v.png").symlink_to(tmp_path / "f.pt")  # --vis names --out's file (which does not exist yet)
    (tmp_path / "photo_link.png").symlink_to(photo)
    cases.append((["--vis", str(tmp_path / "photo_link.png")], "--vis", "input image"))
    for extra, option, expected in cases:
        err = _tool_error(capsys, "extract_features", str(photo), *extra)
        assert option in err and expected in err, (extra, err)
        assert "WARNING" not in err  # refused before the model was built (its random-weights warning)
    assert photo.read_bytes() == photo_bytes and ckpt.read_bytes() == ckpt_bytes


def test_extract_features_checks_unwritable_outputs_first(tmp_path, photo, capsys):
    (tmp_path / "feats.pt").mkdir()
    for option, path, expected in (("--out", tmp_path / "no" / "f.pt", "does not exist"),
                                   ("--vis", tmp_path / "no" / "v.png", "does not exist"),
                                   ("--out", tmp_path / "feats.pt", "is a folder")):
        err = _tool_error(capsys, "extract_features", str(photo), option, str(path))
        assert f"{option} {path}" in err and expected in err and "WARNING" not in err, err


def test_export_onnx_refuses_the_checkpoint_and_unwritable_paths_before_exporting(tmp_path, capsys):
    ckpt = _small_checkpoint(tmp_path / "w.pth")
    before = ckpt.read_bytes()
    (tmp_path / "a_file").write_text("x")
    for output, expected in ((ckpt, "--checkpoint"), (tmp_path / "a_file" / "m.onnx", "is a file, not a folder"),
                             ("/proc/m.onnx", "cannot be written"), (tmp_path, "is a folder")):
        t0 = time.perf_counter()
        with pytest.raises(SystemExit) as exc:
            load_tool("export_onnx").main(["--checkpoint", str(ckpt), "--output", str(output)])
        message = str(exc.value.code)
        assert f"--output {output}" in message and expected in message, message
        assert "[export]" not in capsys.readouterr().out  # nothing was built or exported
        assert time.perf_counter() - t0 < 30
    assert ckpt.read_bytes() == before


def test_atomic_output_keeps_the_old_file_when_the_writer_fails(tmp_path):
    dst = tmp_path / "model.pth"
    dst.write_text("the previous, complete file")
    with pytest.raises(RuntimeError, match="disk full"):
        with _outputs.atomic_output(str(dst)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk full")
    assert dst.read_text() == "the previous, complete file"
    assert os.listdir(tmp_path) == ["model.pth"]
    # a writer that writes nothing is an error, not an empty or missing file
    with pytest.raises(RuntimeError, match="wrote nothing"):
        with _outputs.atomic_output(str(dst)):
            pass
    assert dst.read_text() == "the previous, complete file" and os.listdir(tmp_path) == ["model.pth"]


def test_atomic_output_moves_side_files_keeps_links_and_gives_normal_permissions(tmp_path):
    dst = tmp_path / "m.onnx"
    with _outputs.atomic_output(str(dst)) as tmp:
        assert os.path.basename(tmp) == "m.onnx" and os.path.dirname(os.path.dirname(tmp)) == str(tmp_path)
        with open(tmp, "w") as f:
            f.write("graph")
        with open(tmp + ".data", "w") as f:  # an exporter's external data, named after the file
            f.write("weights")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(dst).st_mode & 0o777 == 0o666 & ~umask
    # a destination that is a symlink: its target gets the new contents, the link stays a link
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    _outputs.write_text(str(link), "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_every_tool_that_writes_files_goes_through_the_atomic_helper():
    """The class, not the examples: a tool writing with a bare open(..., 'w') / torch.save(x, path) /
    np.savez / .save(path) bypasses the atomic rename (the mm tools write through mmengine). A line
    writing to a temporary says so: a ``tmp`` name or a ``# staged:`` comment saying where the path
    comes from."""
    import re

    # make_toy_data writes a whole dataset into a staging folder and renames the folder into place
    whole_folder = {"make_toy_data.py"}
    writers = re.compile(r"open\([^)]*['\"][wa]b?['\"]|torch\.save\(|np\.savez|\.save\(")
    offenders = []
    for name in sorted(os.listdir(TOOLS)):
        if not name.endswith(".py") or name == "_outputs.py" or name in whole_folder:
            continue
        with open(os.path.join(TOOLS, name)) as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if writers.search(line) and "tmp" not in line and "# staged:" not in line:
                offenders.append(f"{name}:{i + 1}: {line.strip()}")
    assert not offenders, "write through tools/_outputs.atomic_output:\n" + "\n".join(offenders)


def test_mm_test_tool_refuses_out_equal_to_its_checkpoint_or_config(tmp_path):
    config, ckpt = tmp_path / "cfg.py", tmp_path / "w.pth"
    config.write_text("default_scope = 'mmdet'\n")
    ckpt.write_bytes(b"weights")
    for out, what in ((ckpt, "CHECKPOINT"), (config, "CONFIG")):
        with pytest.raises(SystemExit, match=f"--out {out} is the {what}"):
            load_tool("test").main([str(config), str(ckpt), "--out", str(out)])
    assert ckpt.read_bytes() == b"weights"


# ------------------------------------------------------------------------------------------------
# the toy data: safe under concurrent runs, complete or regenerated, never deleting a user's files
# ------------------------------------------------------------------------------------------------
toy = load_tool("make_toy_data")
ADE_FILES = 2 * sum(toy.SPLITS_ADE.values())  # an image and a label map per sample


def _toy_run(out, *extra):
    return subprocess.Popen([sys.executable, os.path.join(TOOLS, "make_toy_data.py"), "--out", str(out),
                             "--only", "ade", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=240):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, out


def test_toy_data_two_concurrent_runs_give_one_complete_dataset(tmp_path):
    # before: one fixed <root>.tmp folder shared by both runs (3 of 5 tries crashed, once 42 of 64 images)
    for attempt in range(4):
        out = tmp_path / f"try{attempt}"
        runs = [_toy_run(out), _toy_run(out, *(["--force"] if attempt % 2 else []))]
        results = [_finish(p) for p in runs]
        assert all(rc == 0 for rc, _ in results), results
        root = out / "toy_ade"
        assert toy.is_complete(str(root)), results
        assert len(toy._contents(str(root))) == ADE_FILES
        assert sorted(os.listdir(out)) == [".toy_ade.lock", "toy_ade"]  # no staging folders left


def test_toy_data_incomplete_dataset_is_detected_and_regenerated(tmp_path):
    root = tmp_path / "toy_ade"
    toy.ensure(str(tmp_path), only="ade", quiet=True)
    images = sorted((root / "images" / "training").iterdir())
    images[5].unlink()  # a lost file
    images[6].write_bytes(images[6].read_bytes()[:100])  # a truncated one
    assert not toy.is_complete(str(root))
    toy.ensure(str(tmp_path), only="ade", quiet=True)
    assert toy.is_complete(str(root)) and len(toy._contents(str(root))) == ADE_FILES
    # the first generator's stamp ("1", no contents) on 42 of 64 training images: regenerated too
    for image in sorted((root / "images" / "training").iterdir())[42:]:
        image.unlink()
    (root / ".toy_version").write_text("1\n")
    assert not toy.is_complete(str(root))
    toy.ensure(str(tmp_path), only="ade", quiet=True)
    assert len(list((root / "images" / "training").iterdir())) == toy.SPLITS_ADE["training"]


def test_toy_data_never_replaces_a_folder_holding_user_files(tmp_path, capsys):
    root = tmp_path / "toy_ade"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "notes.txt").write_text("my work")
    for force in ([], ["--force"]):
        assert toy.main(["--out", str(tmp_path), "--only", "ade", *force]) == 1
        err = capsys.readouterr().err
        assert str(root) in err and "mine/notes.txt" in err and "refusing to replace it" in err, err
        assert (root / "mine" / "notes.txt").read_text() == "my work"
    # a generated dataset into which the user put a file of theirs: not replaced either
    (root / "mine" / "notes.txt").unlink()
    (root / "mine").rmdir()
    toy.ensure(str(tmp_path), only="ade", quiet=True)
    (root / "extra.json").write_text("{}")
    with pytest.raises(toy.ToyDataError, match="holds files the generator did not write.*extra.json"):
        toy.ensure(str(tmp_path), only="ade", force=True, quiet=True)
    assert (root / "extra.json").exists() and len(toy._contents(str(root))) == ADE_FILES + 1


def test_toy_data_survives_a_run_killed_mid_way(tmp_path):
    root = tmp_path / "toy_ade"
    for delay in (0.3, 0.8):
        proc = _toy_run(tmp_path, "--force")
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=60)
        # killed before the rename: no dataset or the previous complete one; never a partial one under the name
        assert not root.exists() or toy.is_complete(str(root))
    rc, text = _finish(_toy_run(tmp_path))
    assert rc == 0 and toy.is_complete(str(root)), text
    assert sorted(os.listdir(tmp_path)) == [".toy_ade.lock", "toy_ade"]  # the dead runs' staging removed


# ------------------------------------------------------------------------------------------------
# tool inputs checked first, with errors naming the file and the fix
# ------------------------------------------------------------------------------------------------
features = load_tool("extract_features")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path, suffix):
    # before: convert('RGB') clipped every value above 255 to white
    values = (np.linspace(0, 65535, 40 * 52).reshape(40, 52)).astype(np.uint16)
    path = tmp_path / f"grey16{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    rgb = np.asarray(features.read_image(path))
    assert rgb.shape == (40, 52, 3) and rgb.dtype == np.uint8
    expected = np.round(values / 257.0).astype(np.uint8)
    assert all(np.array_equal(rgb[..., c], expected) for c in range(3))
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200


def test_images_of_every_pillow_mode_become_rgb(tmp_path):
    rng = np.random.RandomState(1)
    rgb = (rng.rand(20, 30, 3) * 255).astype(np.uint8)
    base = Image.fromarray(rgb)
    for mode in ("L", "LA", "RGBA", "P", "1", "CMYK"):
        path = tmp_path / f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        base.convert(mode).save(path)
        out = features.read_image(path)
        assert out.mode == "RGB" and out.size == (30, 20), mode
    # images with no value range to scale are refused, naming the file: floating point, 32-bit integers
    Image.fromarray(rgb[..., 0].astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(features.ImageReadError, match="float.tif.*floating-point"):
        features.read_image(tmp_path / "float.tif")
    Image.fromarray(rgb[..., 0].astype(np.int32)).save(tmp_path / "int32.tif")
    with pytest.raises(features.ImageReadError, match="int32.tif: a 32-bit integer image"):
        features.read_image(tmp_path / "int32.tif")


@pytest.mark.parametrize("orientation, transpose", [(3, Image.ROTATE_180), (6, Image.ROTATE_270),
                                                    (8, Image.ROTATE_90), (2, Image.FLIP_LEFT_RIGHT)])
def test_exif_rotated_jpegs_are_read_the_right_way_up(tmp_path, orientation, transpose):
    rng = np.random.RandomState(2)
    pixels = Image.fromarray((rng.rand(24, 40, 3) * 255).astype(np.uint8))  # landscape as stored
    plain, rotated = tmp_path / "plain.jpg", tmp_path / "rotated.jpg"
    pixels.save(plain, quality=95)
    exif = Image.Exif()
    exif[0x0112] = orientation  # what a camera held on its side writes
    pixels.save(rotated, quality=95, exif=exif)
    got = features.read_image(rotated)
    want = Image.open(plain).convert("RGB").transpose(transpose)
    assert got.size == want.size and np.array_equal(np.asarray(got), np.asarray(want))


def test_extract_features_reads_the_exif_orientation_end_to_end(tmp_path, capsys):
    pixels = Image.fromarray((np.random.RandomState(3).rand(40, 72, 3) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels.save(tmp_path / "portrait.jpg", exif=exif)
    features.main([str(tmp_path / "portrait.jpg"), "--arch", "mini", "--out", str(tmp_path / "f.pt")])
    stage1 = torch.load(tmp_path / "f.pt", weights_only=True)["stage1"]
    assert tuple(stage1.shape[1:]) == (72 // 4, 40 // 4)  # portrait: 72 high, 40 wide


def test_extract_features_names_a_corrupt_image_before_building_the_model(tmp_path, photo, capsys):
    good = tmp_path / "good.jpg"
    Image.open(photo).save(good)
    cases = {"random.jpg": os.urandom(2000), "empty.png": b"", "text.png": b"hello, not an image\n",
             "truncated.jpg": good.read_bytes()[: len(good.read_bytes()) // 2]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        err = _tool_error(capsys, "extract_features", str(tmp_path / name))
        assert f"{tmp_path / name}: not a readable image" in err and "Traceback" not in err, err
        assert "WARNING" not in err  # before the model (and its random-weights warning)


def test_extract_features_refuses_sizes_that_are_not_positive_or_too_large(photo, capsys):
    for size in ("0", "-1", "-224"):
        err = _tool_error(capsys, "extract_features", str(photo), "--size", size)
        assert f"--size {size}: give the short side in pixels, a positive number" in err, err
    err = _tool_error(capsys, "extract_features", str(photo), "--size", "100000")
    assert "--size 100000" in err and "M pixels" in err and "give a smaller size" in err, err


def _resume_cases(tmp_path):
    torch.save(DiNAT(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)).state_dict(), tmp_path / "weights.pth")
    torch.save({"meta": {"epoch": 1}, "state_dict": {}}, tmp_path / "no_iter.pth")
    (tmp_path / "notes.txt").write_text("lr = 0.1\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    return {"notes.txt": "not a checkpoint torch can read", "empty.pth": "not a checkpoint torch can read",
            "weights.pth": "holds no training state", "no_iter.pth": "holds no training state"}


def test_train_resume_check_names_files_that_cannot_be_resumed(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer

    import dinat_backbone.mm  # noqa: F401  (what tools/train.py has imported when it checks: the safe globals)

    check = load_tool("train").check_resume_checkpoint
    for name, expected in _resume_cases(tmp_path).items():
        with pytest.raises(SystemExit, match=f"--resume {tmp_path / name}: {expected}"):
            check(str(tmp_path / name))
    # a training checkpoint as mmengine writes it (message hub with HistoryBuffer objects) passes
    history = HistoryBuffer()
    history.update(0.5)
    torch.save({"meta": {"epoch": 2, "iter": 40}, "state_dict": {"w": torch.ones(2)},
                "message_hub": {"log_scalars": {"train/loss": history}}}, tmp_path / "epoch_2.pth")
    check(str(tmp_path / "epoch_2.pth"))


def test_train_resume_on_a_text_file_fails_before_the_run(tmp_path):
    config = os.path.join(ROOT, "configs", "toy", "mask-rcnn_dinat-toy_fpn_toy-coco.py")
    for name, expected in _resume_cases(tmp_path).items():
        with pytest.raises(SystemExit, match=f"--resume {tmp_path / name}: {expected}"):
            load_tool("train").main([config, "--resume", str(tmp_path / name), "--work-dir", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()  # nothing was run


# ------------------------------------------------------------------------------------------------
# torch.compile(dynamic=True) at batch >= 2
# ------------------------------------------------------------------------------------------------
def test_compile_dynamic_shapes_at_batch_2_and_more_eval_and_train():
    """Inductor failed to lower the downsamplers' convolution at batch >= 2 with symbolic shapes
    ("ValueRangeError: Invalid ranges" without grad, "cannot determine truth value of Relational"
    with it); batch 1 and static shapes worked. Eval at batches 2 and 3 and a training forward at
    batch 2, against eager, with the input gradient of a training step. The loss is a random
    projection of the outputs: ``sum(out ** 2)`` of LayerNorm outputs (weight 1, bias 0 at init) is
    nearly constant, so its gradient is rounding noise and compiled and eager "differ" by ~15 %."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = DiNAT(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), kernel_size=5,
                  dilations=[[2], [1], [1], [1]], drop_path_rate=0.0)
    compiled = torch.compile(model, dynamic=True)
    for training, batches in ((False, (2, 3)), (True, (2,))):
        model.train(training)
        for batch in batches:
            x = torch.randn(batch, 3, 64, 64)
            x_got, x_ref = x.clone().requires_grad_(training), x.clone().requires_grad_(training)
            with torch.no_grad() if not training else torch.enable_grad():
                got, ref = compiled(x_got), model(x_ref)
            assert all(g.shape == r.shape for g, r in zip(got, ref))
            assert max(float((g - r).abs().max()) for g, r in zip(got, ref)) <= 1e-4
            if training:
                weights = [torch.randn_like(r) for r in ref]
                sum((g * w).sum() for g, w in zip(got, weights)).backward()
                sum((r * w).sum() for r, w in zip(ref, weights)).backward()
                assert float((x_got.grad - x_ref.grad).abs().max() / x_ref.grad.abs().max()) <= 1e-4
    torch._dynamo.reset()


def test_export_onnx_refuses_sizes_it_cannot_export(capsys):
    cases = [(["--batch", "0"], "must be positive"), (["--shape", "0", "224"], "must be positive"),
             (["--shape", "224", "-5"], "must be positive"),
             (["--dynamic", "--shape", "20", "64"], "--min-size (33)"),
             (["--dynamic", "--shape", "224", "224", "--max-size", "100"], "--max-size (100)")]
    for argv, expected in cases:
        err = _tool_error(capsys, "export_onnx", *argv)
        assert expected in err, (argv, err)
