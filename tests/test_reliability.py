"""Hostile or careless input (issue 14): malformed checkpoint files end in a clear error naming the
file, never a hang or a bare ``EOFError``; non-finite weights are refused; a skipped test fails
the suite. Torch only (the mm entry points are in tests/test_mm_reliability.py)."""
import contextlib
import io
import os
import re
import signal
from collections import OrderedDict

import pytest
import torch

import conftest
from conftest import load_tool
from dinat_backbone import DiNAT, DiNAT_s, convert_checkpoint, load_pretrained

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one thread, no kernel warning

def escaped(path) -> str:
    return re.escape(str(path))


SMALL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), drop_path_rate=0.0)


@contextlib.contextmanager
def time_limit(seconds=30):
    """Fail instead of hanging (the cyclic checkpoint looped for ever in checkpoint._unwrap)."""
    def _timeout(signum, frame):
        raise TimeoutError(f"no result after {seconds} s: the loader hangs")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _self_wrapped_state_dict():
    cyclic = {}
    cyclic["state_dict"] = cyclic
    return cyclic


def _model_module_cycle():
    outer = {}
    outer["model"] = {"module": outer}
    return outer


def _module_cycle():
    inner = {}
    inner["module"] = inner
    return {"model": inner}


CYCLES = {"state_dict": _self_wrapped_state_dict, "model.module": _model_module_cycle,
          "model.module-self": _module_cycle}


@pytest.fixture(params=sorted(CYCLES))
def cyclic_file(request, tmp_path):
    path = tmp_path / "cyclic.pth"
    torch.save(CYCLES[request.param](), path)
    return path


# ----------------------------------------------------------------------------------------------
# cyclic / absurdly nested wrappers: every entry point terminates with an error naming the file
# ----------------------------------------------------------------------------------------------
def test_cyclic_checkpoint_is_an_error_in_load_pretrained(cyclic_file):
    assert len(torch.load(cyclic_file, weights_only=True)) == 1  # weights_only itself accepts the file
    with time_limit(), pytest.raises(ValueError, match=rf"^load_pretrained: {escaped(cyclic_file)} is malformed: "
                                                       r"the wrapper at (state_dict|model\.module) is one that "
                                                       r"encloses it \(a cycle\)"):
        load_pretrained(DiNAT(**SMALL), str(cyclic_file))


def test_cyclic_checkpoint_is_an_error_in_init_weights_and_convert_checkpoint(cyclic_file):
    for cls in (DiNAT, DiNAT_s):
        model = cls(**SMALL, init_cfg=dict(type="Pretrained", checkpoint=str(cyclic_file)))
        with time_limit(), pytest.raises(ValueError, match=r"is malformed: .*\(a cycle\)"):
            model.init_weights()
        with time_limit(), pytest.raises(ValueError, match=r"is malformed: .*\(a cycle\)"):
            load_pretrained(model, str(cyclic_file), prefix="backbone")
    with time_limit(), pytest.raises(ValueError, match=r"^convert_checkpoint: the checkpoint is malformed"):
        convert_checkpoint(torch.load(cyclic_file, weights_only=True))


def test_cyclic_checkpoint_is_an_error_in_the_tools(cyclic_file, tmp_path):
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (90, 120, 200)).save(image)
    for tool, argv in (("convert_checkpoint", [str(cyclic_file), str(tmp_path / "out.pth")]),
                       ("extract_features", [str(image), "--arch", "mini", "--checkpoint", str(cyclic_file),
                                             "--size", "64", "--out", str(tmp_path / "f.pt")])):
        # both tools name the file (convert_checkpoint reads it with load_checkpoint_file)
        with time_limit(60), pytest.raises(ValueError, match=rf"{escaped(cyclic_file)} is malformed: .*\(a cycle\)"), \
                contextlib.redirect_stdout(io.StringIO()):
            load_tool(tool).main(argv)


def test_deeply_nested_wrappers_are_an_error():
    obj = DiNAT(**SMALL).state_dict()
    for _ in range(20):
        obj = {"state_dict": obj}
    with time_limit(), pytest.raises(ValueError, match=r"nests more than 8 wrappers \(state_dict\.state_dict"):
        load_pretrained(DiNAT(**SMALL), obj)


def test_real_wrapper_depths_still_load():
    src = DiNAT(**SMALL)
    obj = {"state_dict": {"model": {"module": OrderedDict((f"module.{k}", v) for k, v in src.state_dict().items())}}}
    dst = DiNAT(**SMALL)
    result = load_pretrained(dst, obj)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


# ----------------------------------------------------------------------------------------------
# files that are not checkpoints
# ----------------------------------------------------------------------------------------------
def test_empty_file_says_it_is_empty(tmp_path):
    path = tmp_path / "interrupted.pth"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"^load_pretrained: {escaped(path)} is empty \(0 bytes\), not a checkpoint"):
        load_pretrained(DiNAT(**SMALL), str(path))
    st = tmp_path / "model.safetensors"
    st.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{escaped(st)} is empty"):
        load_pretrained(DiNAT(**SMALL), str(st))


@pytest.mark.parametrize("content", [b"hello world\nnot a checkpoint\n", b"xyz\n",
                                     b"<html><body>404 Not Found</body></html>"])
def test_text_file_says_it_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(RuntimeError, match=rf"^load_pretrained: {escaped(path)} is not a PyTorch checkpoint "
                                           rf".*starts with {re.escape(repr(content[:4]))[:-1]}"):
        load_pretrained(DiNAT(**SMALL), str(path))


@pytest.mark.parametrize("zipfile", [True, False])
def test_truncated_file_says_it_is_truncated(tmp_path, zipfile):
    whole, cut = tmp_path / "whole.pth", tmp_path / "cut.pth"
    torch.save(DiNAT(**SMALL).state_dict(), whole, _use_new_zipfile_serialization=zipfile)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=rf"^load_pretrained: {escaped(cut)} is not a readable checkpoint "
                                           r"\(truncated"):
        load_pretrained(DiNAT(**SMALL), str(cut))
    load_pretrained(DiNAT(**SMALL), str(whole))  # the legacy (pickle) format itself is fine


def test_checkpoint_without_tensors_is_an_error():
    with pytest.raises(ValueError, match=r"holds no tensors \(keys \['epoch', 'iter'\]\)"):
        load_pretrained(DiNAT(**SMALL), {"state_dict": {"epoch": 3, "iter": 10}})


# ----------------------------------------------------------------------------------------------
# non-finite weights
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("cls", [DiNAT, DiNAT_s])
def test_non_finite_weights_are_refused_naming_the_first_bad_key(tmp_path, cls, bad):
    src = cls(**SMALL)
    state = src.state_dict()
    first = next(k for k in state if k.endswith("attn.qkv.weight"))
    state[first][0, :3] = bad
    state["norm3.bias"][0] = bad  # a later key is not the one named
    path = tmp_path / "diverged.pth"
    torch.save({"state_dict": OrderedDict((f"backbone.{k}", v) for k, v in state.items())}, path)
    dst = cls(**SMALL)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=rf"^load_pretrained: {escaped(path)} has non-finite weights: {first} holds 3 "
                                         r"NaN / Inf value\(s\)"):
        load_pretrained(dst, str(path))
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # nothing was loaded


def test_non_finite_values_outside_the_model_do_not_matter():
    """Only what is loaded counts: e.g. a detector head that diverged is not the backbone's problem."""
    state = OrderedDict((f"backbone.{k}", v) for k, v in DiNAT(**SMALL).state_dict().items())
    state["roi_head.bbox_head.fc_cls.weight"] = torch.full((3, 4), float("nan"))
    result = load_pretrained(DiNAT(**SMALL), {"state_dict": state})
    assert not result.missing_keys and not result.unexpected_keys


# ----------------------------------------------------------------------------------------------
# the suite itself: a skipped test fails it (conftest.pytest_runtest_makereport)
# ----------------------------------------------------------------------------------------------
def test_a_skipped_test_fails_the_suite(pytester):
    pytester.makepyfile(
        test_skips="""
import pytest

def test_passes():
    pass

def test_skip_call():
    pytest.skip("no dependency")

def test_importorskip():
    pytest.importorskip("a_module_that_does_not_exist")

@pytest.mark.skipif(True, reason="condition")
def test_skipif():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False
""")
    result = pytester.runpytest("-p", "no:cacheprovider", plugins=[conftest])
    result.assert_outcomes(passed=1, failed=2, errors=1, xfailed=1)  # a skip marker acts at setup: an error
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_skip_call was skipped (*no dependency*); this suite allows no skipped tests*"])
    assert "skipped" not in result.stdout.lines[-1]


def test_a_module_skipped_at_import_fails_the_suite(pytester):
    pytester.makepyfile(test_module_skip="""
import pytest
pytest.importorskip("a_module_that_does_not_exist")

def test_never_collected():
    pass
""")
    result = pytester.runpytest("-p", "no:cacheprovider", plugins=[conftest])
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error stops the run
    result.stdout.fnmatch_lines(["*test_module_skip.py was skipped (*a_module_that_does_not_exist*"])


def test_no_test_file_skips():
    """The repository's own tests neither skip nor importorskip (GPU-only tests: the cuda marker)."""
    here = os.path.dirname(os.path.abspath(__file__))
    offenders = []
    for name in sorted(os.listdir(here)):
        if name.endswith(".py") and name != os.path.basename(__file__):
            with open(os.path.join(here, name)) as f:
                for number, line in enumerate(f, 1):
                    if re.search(r"pytest\.(skip|importorskip)\s*\(|\.mark\.skip(if)?\b", line):
                        offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, offenders
