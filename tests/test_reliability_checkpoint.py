"""Checkpoints tried as a careless or hostile user would (issue 20) and the seams of
``dinat_backbone.checkpoint`` (issue 22 §3): URLs cached by the whole URL and only when complete,
a checkpoint of another size or none of the model's weights is an error, the project's own
training checkpoints load without the mm glue, and files that are no checkpoint are named before
any work. Real files throughout: checkpoints written by torch.save / mmengine's Runner, served over
HTTP by a server on 127.0.0.1."""
import logging
import os
import re
from collections import OrderedDict

import pytest
import torch

from dinat_backbone import DiNAT, convert_checkpoint, load_pretrained

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one thread, no kernel warning

SMALL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), drop_path_rate=0.0)


def escaped(path) -> str:
    return re.escape(str(path))


# ----------------------------------------------------------------------------------------------
# seams: conversion (dict -> dict), file reading, loading into a model
# ----------------------------------------------------------------------------------------------
def test_the_package_parts_and_the_public_names():
    import dinat_backbone.checkpoint as package
    from dinat_backbone.checkpoint import convert, files, load

    assert convert.convert_checkpoint is package.convert_checkpoint is convert_checkpoint
    assert files.load_checkpoint_file is package.load_checkpoint_file
    assert load.load_pretrained is package.load_pretrained is load_pretrained
    assert {"CHECKPOINT_URLS", "checkpoint_family", "resize_rpb"} <= set(package.__all__)
    # conversion touches no files: its module imports nothing that reads them
    assert not any(name in vars(convert) for name in ("os", "zipfile", "pickle", "urllib"))


@pytest.mark.parametrize("prefix", ["backbone.", "dinat."])
def test_the_last_resort_prefix_guess_is_logged(caplog, prefix):
    """A partial state dict (no patch embedding to anchor the layout) had a shared prefix stripped
    silently; now the decision is logged."""
    state = OrderedDict((f"{prefix}{k}", v) for k, v in DiNAT(**SMALL).state_dict().items()
                        if k.startswith("levels.0."))
    with caplog.at_level(logging.WARNING, logger="dinat_backbone.checkpoint"):
        out = convert_checkpoint(state)
    assert set(out) == {k[len(prefix):] for k in state}
    assert f"every key starts with {prefix!r}, which was stripped" in caplog.text


def test_unrecognised_keys_are_used_as_they_are_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="dinat_backbone.checkpoint"):
        out = convert_checkpoint({"levels.0.blocks.0.norm1.weight": torch.ones(16)})
    assert list(out) == ["levels.0.blocks.0.norm1.weight"]
    assert "its 1 keys are used as they are (first: levels.0.blocks.0.norm1.weight)" in caplog.text


def test_one_pretrained_loading_path_for_init_cfg(tmp_path):
    """``init_cfg`` becomes a loaded checkpoint in one function (the core models and the mm wrappers
    call it); a key it does not read is an error, not silently ignored."""
    from dinat_backbone.checkpoint import load_pretrained_from_cfg

    src = DiNAT(**SMALL)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": OrderedDict((f"backbone.{k}", v) for k, v in src.state_dict().items())}, path)
    dst = DiNAT(**SMALL, init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone"))
    dst.init_weights()
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(ValueError, match=r"init_cfg type='Pretrained' has no key\(s\) \['strict'\]"):
        load_pretrained_from_cfg(DiNAT(**SMALL), dict(type="Pretrained", checkpoint=str(path), strict=True))
    with pytest.raises(ValueError, match=r"init_cfg must be None or dict\(type='Pretrained'"):
        DiNAT(**SMALL, init_cfg=dict(type="Kaiming")).init_weights()


# ----------------------------------------------------------------------------------------------
# URLs: cached by the whole URL, only when complete and a checkpoint (issue 20)
# ----------------------------------------------------------------------------------------------
class _Server:
    """An HTTP server on 127.0.0.1 (a thread) answering ``routes[path] = (status, content type,
    body[, declared length])``; ``hits`` counts the requests per path."""

    def __init__(self):
        import http.server
        import threading

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's name)
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                status, ctype, body, *declared = server.routes.get(self.path, (404, "text/html", b"<h1>404</h1>"))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(declared[0] if declared else len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.routes, self.hits = {}, {}
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """The server, and a fresh download cache under tmp_path (TORCH_HOME) for the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would win over TORCH_HOME
    srv = _Server()
    yield srv
    srv.close()


def _checkpoint_bytes(model) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _seeded(seed):
    torch.manual_seed(seed)
    return DiNAT(**SMALL)


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_two_urls_with_the_same_file_name_are_two_checkpoints(server):
    """``.../a/model.pth`` and then ``.../b/model.pth`` gave b the weights of a (cached by name)."""
    a, b = _seeded(1), _seeded(2)
    server.routes = {"/a/model.pth": (200, "application/octet-stream", _checkpoint_bytes(a)),
                     "/b/model.pth": (200, "application/octet-stream", _checkpoint_bytes(b))}
    for src, url in ((a, f"{server.base}/a/model.pth"), (b, f"{server.base}/b/model.pth")):
        dst = DiNAT(**SMALL)
        load_pretrained(dst, url)
        assert _same_weights(dst, src), url
    # the second load of each comes from the cache (one request per URL), still the right weights
    dst = DiNAT(**SMALL)
    load_pretrained(dst, f"{server.base}/a/model.pth")
    assert _same_weights(dst, a) and server.hits == {"/a/model.pth": 1, "/b/model.pth": 1}


def test_cache_file_names_carry_a_hash_of_the_whole_url(server):
    from dinat_backbone.checkpoint.download import cache_dir, cached_path

    one, two = cached_path(f"{server.base}/a/model.pth"), cached_path(f"{server.base}/b/model.pth")
    assert one != two and os.path.dirname(one) == cache_dir() == os.path.dirname(two)
    assert re.fullmatch(r"model-[0-9a-f]{16}\.pth", os.path.basename(one))
    assert cached_path(f"{server.base}/a/model.pth?x=1") != one


def test_an_html_error_page_is_not_cached_and_the_fixed_file_then_loads(server):
    url = f"{server.base}/c/model.pth"
    server.routes = {"/c/model.pth": (200, "text/html", b"<!DOCTYPE html><html><body>Maintenance</body></html>")}
    with pytest.raises(RuntimeError, match=rf"^load_pretrained: downloading {re.escape(url)} failed: the server sent "
                                           r"an HTML page \(Content-Type text/html.*nothing was cached"):
        load_pretrained(DiNAT(**SMALL), url)
    from dinat_backbone.checkpoint.download import cache_dir

    assert os.listdir(cache_dir()) == []  # neither the page nor a temporary file stays behind
    src = _seeded(3)
    server.routes["/c/model.pth"] = (200, "application/octet-stream", _checkpoint_bytes(src))
    dst = DiNAT(**SMALL)
    load_pretrained(dst, url)
    assert _same_weights(dst, src)


@pytest.mark.parametrize("answer, message", [
    ((404, "text/html", b"<h1>gone</h1>"), r"the server answered 404 Not Found; nothing was cached"),
    ((500, "text/plain", b"oops"), r"the server answered 500 Internal Server Error"),
    ((200, "application/octet-stream", b""), r"the server sent 0 bytes; nothing was cached"),
    ((200, "application/octet-stream", b"not a checkpoint at all"), r"the answer is not a PyTorch checkpoint"),
])
def test_failed_downloads_say_what_the_server_sent_and_cache_nothing(server, answer, message):
    url = f"{server.base}/d/model.pth"
    server.routes = {"/d/model.pth": answer}
    with pytest.raises(RuntimeError, match=rf"^load_pretrained: downloading {re.escape(url)} failed.*{message}") as err:
        load_pretrained(DiNAT(**SMALL), url)
    assert "weights_only=False" not in str(err.value)
    from dinat_backbone.checkpoint.download import cache_dir

    assert os.listdir(cache_dir()) == []


def test_a_cut_off_download_is_not_cached(server):
    body = _checkpoint_bytes(_seeded(4))
    url = f"{server.base}/e/model.pth"
    server.routes = {"/e/model.pth": (200, "application/octet-stream", body[: len(body) // 2], len(body))}
    with pytest.raises(RuntimeError, match=rf"downloading {re.escape(url)} failed.*nothing was cached"):
        load_pretrained(DiNAT(**SMALL), url)
    from dinat_backbone.checkpoint.download import cache_dir

    assert os.listdir(cache_dir()) == []


def test_a_damaged_cached_file_is_named_with_its_url(server):
    from dinat_backbone.checkpoint.download import cached_path

    url = f"{server.base}/f/model.pth"
    body = _checkpoint_bytes(_seeded(5))
    server.routes = {"/f/model.pth": (200, "application/octet-stream", body)}
    load_pretrained(DiNAT(**SMALL), url)
    path = cached_path(url)
    with open(path, "r+b") as f:  # damaged on disk since (a full disk, a copy cut off)
        f.truncate(len(body) // 2)
    with pytest.raises(RuntimeError, match=rf"^load_pretrained: {escaped(path)} \(the cached download of "
                                           rf"{re.escape(url)}\) is not a readable checkpoint .*delete it to download "
                                           r"it again") as err:
        load_pretrained(DiNAT(**SMALL), url)
    assert "weights_only=False" not in str(err.value)


def _closed_port_url():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/dinat_mini_in1k_224.pth"


def test_no_network_says_the_download_failed_and_what_to_do(server):
    """A raw urllib traceback before; now: the download failed, pass a local file or init_cfg=None."""
    url = _closed_port_url()
    for load in (lambda: load_pretrained(DiNAT(**SMALL), url),
                 lambda: DiNAT(**SMALL, init_cfg=dict(type="Pretrained", checkpoint=url)).init_weights()):
        with pytest.raises(RuntimeError, match=rf"^load_pretrained: downloading {re.escape(url)} failed "
                                               r"\(.*refused.*\); nothing was cached\. Without network access, "
                                               r"download it elsewhere and pass the local file instead .*init_cfg=None"
                                               ) as err:
            load()
        assert err.value.__cause__ is None and err.value.__suppress_context__  # no urllib traceback above it


# ----------------------------------------------------------------------------------------------
# a checkpoint of another size, or one that leaves weights unloaded (issue 20)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mini_and_tiny():
    torch.manual_seed(0)
    return DiNAT(arch="mini").eval(), DiNAT(arch="tiny").eval()


def test_a_mini_checkpoint_in_a_tiny_model_is_an_error_naming_mini(mini_and_tiny):
    """12 of stage 3's 18 blocks stayed random, reported as one ~9,000-character line of keys."""
    mini, tiny = mini_and_tiny
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with pytest.raises(ValueError, match=r"is a checkpoint of another size: it has depths \(3, 4, 6, 5\), embed_dim 64 "
                                         r"= DiNAT-mini, the model DiNAT has depths \(3, 4, 18, 5\), embed_dim 64 = "
                                         r"DiNAT-tiny; 12 of stage 3's 18 blocks would keep random weights \(missing: "
                                         r"levels\.2\.blocks\.6-17 \(12 whole blocks\)\)\. Build the model with "
                                         r"arch='mini' .*dinat_tiny_in1k_224\.pth") as err:
        load_pretrained(tiny, mini.state_dict())
    assert len(str(err.value)) < 600
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())  # nothing was loaded
    # the reverse: blocks of the checkpoint would be dropped
    with pytest.raises(ValueError, match=r"12 of stage 3's 18 checkpoint blocks would be dropped\. Build the model "
                                         r"with arch='tiny'"):
        load_pretrained(mini, tiny.state_dict())


def test_a_shape_mismatch_names_both_variants(mini_and_tiny):
    torch.manual_seed(0)
    small = DiNAT(arch="small")
    with pytest.raises(ValueError, match=r"shape mismatch for patch_embed\.proj\.0\.weight: checkpoint "
                                         r"\[48, 3, 3, 3\], model \[32, 3, 3, 3\]; the checkpoint has .*embed_dim 96 = "
                                         r"DiNAT-small, the model .*embed_dim 64 = DiNAT-tiny: build the model with "
                                         r"arch='small'"):
        load_pretrained(mini_and_tiny[1], small.state_dict())


def test_missing_weights_are_an_error_summarised_by_module(caplog):
    cfg = dict(SMALL, depths=(1, 2, 1, 1))
    sd = DiNAT(**cfg).state_dict()
    del sd["levels.3.blocks.0.mlp.fc2.bias"], sd["patch_embed.proj.0.weight"]
    for key in [k for k in sd if k.startswith("levels.1.blocks.0.")]:
        del sd[key]
    with pytest.raises(ValueError, match=r"leaves \d+ of the model's \d+ weights unloaded \(they would keep their "
                                         r"random init\): levels\.1\.blocks\.0 \(1 whole block\); "
                                         r"patch_embed\.proj\.0\.weight; levels\.3\.blocks\.0\.mlp\.fc2\.bias\. "
                                         r".*allow_missing=True"):
        load_pretrained(DiNAT(**cfg), sd)
    # allowed explicitly: logged, summarised the same way; the output norms alone may always be missing
    with caplog.at_level(logging.WARNING, logger="dinat_backbone.checkpoint"):
        result = load_pretrained(DiNAT(**cfg), sd, allow_missing=True)
    assert "levels.1.blocks.0 (1 whole block)" in caplog.text and len(result.missing_keys) > 3
    no_norms = {k: v for k, v in DiNAT(**cfg).state_dict().items() if not k.startswith("norm")}
    assert load_pretrained(DiNAT(**cfg), no_norms).missing_keys  # the classification layout: fine
    model = DiNAT(**SMALL, init_cfg=dict(type="Pretrained", checkpoint=sd, allow_missing=True))
    model.init_weights()


def test_extract_features_refuses_a_checkpoint_of_another_arch_from_a_url(server, mini_and_tiny, tmp_path, capsys):
    """--arch tiny with DiNAT-mini weights exited 0 with 12 random blocks; the URL path is the same."""
    from PIL import Image

    from conftest import load_tool

    image = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (90, 120, 200)).save(image)
    server.routes = {"/w/dinat_mini_in1k_224.pth": (200, "application/octet-stream",
                                                    _checkpoint_bytes(mini_and_tiny[0]))}
    url = f"{server.base}/w/dinat_mini_in1k_224.pth"
    tool = load_tool("extract_features")
    feats = tool.main([str(image), "--arch", "mini", "--checkpoint", url])
    assert [f.shape[0] for f in feats] == [64, 128, 256, 512]
    with pytest.raises(ValueError, match=r"it has depths \(3, 4, 6, 5\), embed_dim 64 = DiNAT-mini, the model DiNAT "
                                         r"has depths \(3, 4, 18, 5\).*arch='mini' \(--arch mini\)"):
        tool.main([str(image), "--arch", "tiny", "--checkpoint", url])
    assert server.hits == {"/w/dinat_mini_in1k_224.pth": 1}


@pytest.mark.parametrize("argv, url", [
    (["--arch", "tiny"], "/imagenet1k/dinat_tiny_in1k_224.pth"),
    (["--model", "nat", "--arch", "small"], "/nat/checkpoints/CLS/nat_small.pth"),
    (["--model", "dinat_s", "--arch", "tiny"], "/imagenet1k/dinat_s_tiny_in1k_224.pth"),
])
def test_the_random_weights_warning_suggests_the_checkpoint_of_the_arch(argv, url, capsys):
    """It suggested the mini URL for every --arch."""
    import argparse

    from conftest import load_tool

    from dinat_backbone import MODEL_FAMILIES

    tool = load_tool("extract_features")
    args = tool.build_parser().parse_args(["img.png", *argv])
    cls, kwargs = tool._common.model_choice(argparse.ArgumentParser(), args)
    tool.warn_random_weights(cls, kwargs["arch"])
    err = capsys.readouterr().err
    assert "RANDOM weights" in err and url in err and "mini" not in err
    assert cls is MODEL_FAMILIES[args.model]


# ----------------------------------------------------------------------------------------------
# the project's own training checkpoints (mmengine's message hub holds HistoryBuffer objects)
# ----------------------------------------------------------------------------------------------
_TRAIN_SCRIPT = r'''
import sys, torch
from torch.utils.data import Dataset
from mmengine.model import BaseModel
from mmengine.runner import Runner
from dinat_backbone import DiNAT

class Detectorish(BaseModel):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = DiNAT(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), drop_path_rate=0.0)
        self.head = torch.nn.Linear(128, 2)

    def forward(self, inputs, data_samples=None, mode="tensor"):
        feats = self.backbone(torch.stack(inputs) if isinstance(inputs, list) else inputs)
        out = self.head(feats[-1].mean((2, 3)))
        return {"loss": out.square().mean()} if mode == "loss" else out

class Images(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return dict(inputs=torch.randn(3, 32, 32))

runner = Runner(model=Detectorish(), work_dir=sys.argv[1],
                train_dataloader=dict(dataset=Images(), sampler=dict(type="DefaultSampler", shuffle=False),
                                      batch_size=2, collate_fn=dict(type="default_collate")),
                train_cfg=dict(by_epoch=False, max_iters=2),
                optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-3)),
                default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False)))
runner.train()
torch.save(runner.model.backbone.state_dict(), sys.argv[1] + "/backbone_after_training.pth")
'''


def _run_python(code, *args, cwd=None, timeout=300):
    import subprocess
    import sys

    from conftest import ROOT

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory):
    """A real checkpoint of an mmengine Runner (2 iterations, AdamW): what tools/train.py writes."""
    work = tmp_path_factory.mktemp("train")
    done = _run_python(_TRAIN_SCRIPT, work)
    assert done.returncode == 0, done.stderr[-3000:]
    path = work / "iter_2.pth"
    # what torch.load refuses without any allow-list (other tests in this process may have added
    # mmengine's classes with dinat_backbone.mm.setup_training: the query leaves those out)
    added = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    finally:
        torch.serialization.add_safe_globals(added)
    assert "mmengine.logging.history_buffer.HistoryBuffer" in unsafe and "builtins.getattr" in unsafe
    return path, work / "backbone_after_training.pth"


_READ_WITHOUT_MM = r'''
import sys, torch
from dinat_backbone import DiNAT, load_pretrained
from dinat_backbone.checkpoint import load_checkpoint_file
path, reference = sys.argv[1], torch.load(sys.argv[2], weights_only=True)
before = set(torch.serialization.get_safe_globals())
model = DiNAT(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), drop_path_rate=0.0)
result = load_pretrained(model, path)
assert not result.missing_keys and not result.unexpected_keys, result
assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())
assert set(load_checkpoint_file(path)) >= {"backbone.patch_embed.proj.0.weight", "head.weight"}
assert set(torch.serialization.get_safe_globals()) == before  # the allow-list is as it was
import sys as s
if len(s.argv) > 3:  # tools/train.py's allow-list (the real mmengine classes) registered: still read the same
    from mmengine.logging.history_buffer import HistoryBuffer
    torch.serialization.add_safe_globals([HistoryBuffer])
    model2 = DiNAT(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), drop_path_rate=0.0)
    load_pretrained(model2, path)
    assert HistoryBuffer in torch.serialization.get_safe_globals()
else:
    assert "mmengine" not in s.modules and "dinat_backbone.mm" not in s.modules, "imported the mm stack"
print("ok")
'''


@pytest.mark.parametrize("registered", [False, True], ids=["fresh-process", "with-train-allow-list"])
def test_training_checkpoints_load_without_the_mm_glue(training_checkpoint, registered):
    """They failed unless dinat_backbone.mm happened to be imported, suggesting weights_only=False."""
    path, reference = training_checkpoint
    done = _run_python(_READ_WITHOUT_MM, path, reference, *(["registered"] if registered else []))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_training_checkpoints_in_the_tools(training_checkpoint, tmp_path):
    path, reference = training_checkpoint
    out = tmp_path / "native.pth"
    import subprocess  # the tools run as the user runs them: a fresh process each, no mm glue imported
    import sys

    from conftest import ROOT, TOOLS

    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, os.path.join(TOOLS, "convert_checkpoint.py"), str(path), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    converted, expected = torch.load(out, weights_only=True), torch.load(reference, weights_only=True)
    assert set(converted) == set(expected) and all(torch.equal(converted[k], v) for k, v in expected.items())
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("RGB", (40, 32), (90, 120, 200)).save(image)
    done = subprocess.run([sys.executable, os.path.join(TOOLS, "extract_features.py"), str(image), "--checkpoint",
                           str(path), "--arch", "mini"], capture_output=True, text=True, env=env, timeout=300)
    # the file loads (no weights_only / HistoryBuffer error); its backbone is not DiNAT-mini, which is said
    assert done.returncode != 0 and "shape mismatch for patch_embed" in done.stderr, done.stderr[-3000:]
    assert "weights_only" not in done.stderr and "HistoryBuffer" not in done.stderr


class _Gadget:
    """An object a checkpoint should never run: stands for any class the reader does not know."""

    def __reduce__(self):
        return (OrderedDict.fromkeys, (["a"],))


class _GetattrGadget:
    def __reduce__(self):
        return (getattr, (OrderedDict, "fromkeys"))


@pytest.mark.parametrize("extra, named", [
    (_Gadget(), None),
    (_GetattrGadget(), "getattr(<class 'collections.OrderedDict'>, 'fromkeys') is not read from a checkpoint"),
])
def test_other_objects_are_refused_without_suggesting_weights_only_false(tmp_path, extra, named):
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": DiNAT(**SMALL).state_dict(), "meta": extra}, path)
    with pytest.raises(RuntimeError, match=rf"^load_pretrained: {escaped(path)} holds objects other than tensors") as e:
        load_pretrained(DiNAT(**SMALL), str(path))
    assert "weights_only=False" not in str(e.value) and "save the weights alone" in str(e.value)
    if named:
        assert named in str(e.value)


# ----------------------------------------------------------------------------------------------
# tools/test.py: a checkpoint that leaves the model's weights unloaded (issue 20)
# ----------------------------------------------------------------------------------------------
def _toy_det_config():
    from conftest import ROOT

    return os.path.join(ROOT, "configs", "toy", "mask-rcnn_dinat-toy_fpn_toy-coco.py")


def _toy_detector():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from conftest import load_tool

    load_tool("_common").import_scope("mmdet")
    cfg = Config.fromfile(_toy_det_config())
    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def test_weights_left_unloaded_by_a_full_model_checkpoint():
    """The torch-only part of the check: keys and shapes of the built model against the file."""
    from dinat_backbone.checkpoint.load import summarize_by_module, weights_left_unloaded

    model = torch.nn.Sequential(OrderedDict(backbone=DiNAT(**SMALL), head=torch.nn.Linear(128, 3)))
    full = {f"module.{k}": v for k, v in model.state_dict().items()}  # a DDP-saved file
    assert weights_left_unloaded(model, full) == ([], [])
    backbone_only = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    backbone_only["backbone.patch_embed.proj.0.bias"] = torch.zeros(3)
    missing, mismatched = weights_left_unloaded(model, backbone_only)
    assert missing == ["head.weight", "head.bias"]
    assert mismatched == ["backbone.patch_embed.proj.0.bias [3] -> [8]"]
    assert summarize_by_module(missing, model.state_dict()) == "head.weight (all 1); head.bias (all 1)"
    assert summarize_by_module(missing, model.state_dict(), depth=1) == "head (all 2)"


def test_tools_test_refuses_a_checkpoint_that_loads_none_of_the_detector(server, tmp_path):
    """A DiNAT backbone file on the DiNAT detector evaluated to mAP 0.000 with exit 0; it is an error
    before the evaluation, naming what is missing (here fetched from a URL, through the cache)."""
    from conftest import load_tool

    detector = _toy_detector()
    backbone_only = {k[len("backbone."):]: v for k, v in detector.state_dict().items() if k.startswith("backbone.")}
    server.routes = {"/ckpt/model.pth": (200, "application/octet-stream", _checkpoint_bytes_of(backbone_only))}
    url = f"{server.base}/ckpt/model.pth"
    load_tool("make_toy_data").ensure(quiet=True)
    with pytest.raises(SystemExit) as info:
        load_tool("test").main([_toy_det_config(), url, "--work-dir", str(tmp_path / "work")])
    message = str(info.value.code)
    assert message.startswith(f"tools/test.py: the checkpoint {url} does not fit the model built from the config: ")
    assert re.search(r"(\d+) of the model's \1 weights are not in it: backbone\.patch_embed \(all \d+\); "
                     r"backbone\.levels \(all \d+\)", message), message
    assert "backbone-only file" in message and "--allow-missing-weights" in message
    assert server.hits == {"/ckpt/model.pth": 1}


def test_tools_test_allow_missing_weights_warns_instead(tmp_path):
    """--allow-missing-weights: the same account as a warning; a full checkpoint passes silently."""
    from conftest import load_tool

    detector = _toy_detector()
    partial = {k: v for k, v in detector.state_dict().items() if not k.startswith("roi_head.mask_head.")}
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": partial, "meta": {}}, path)
    tool = load_tool("test")
    with pytest.raises(SystemExit, match=r"weights are not in it: roi_head\.mask_head \(all \d+\)"):
        tool.check_checkpoint_covers_model(detector, str(path), str(path))
    with pytest.warns(UserWarning, match=r"roi_head\.mask_head \(all \d+\).*--allow-missing-weights: evaluating "
                                         r"anyway"):
        tool.check_checkpoint_covers_model(detector, str(path), str(path), allow_missing=True)
    tool.check_checkpoint_covers_model(detector, str(_saved(tmp_path, detector.state_dict())), "full.pth")


def _checkpoint_bytes_of(state) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _saved(tmp_path, state):
    path = tmp_path / "full.pth"
    torch.save({"state_dict": state}, path)
    return path


def test_local_checkpoint_for_the_mm_tools(server, tmp_path):
    """tools/test.py (the checkpoint) and tools/train.py (--resume / load_from) hand mmengine the
    whole-URL cache's file; a path passes unchanged."""
    from dinat_backbone.checkpoint.download import cached_path, local_checkpoint

    body = _checkpoint_bytes(_seeded(6))
    server.routes = {"/r/iter_100.pth": (200, "application/octet-stream", body)}
    url = f"{server.base}/r/iter_100.pth"
    assert local_checkpoint(url) == cached_path(url) == local_checkpoint(url)
    with open(cached_path(url), "rb") as f:
        assert f.read() == body
    assert server.hits == {"/r/iter_100.pth": 1}
    assert local_checkpoint(str(tmp_path / "x.pth")) == str(tmp_path / "x.pth")


# ----------------------------------------------------------------------------------------------
# compressed zip records: bounded before torch.load allocates them (issue 20)
# ----------------------------------------------------------------------------------------------
def _repacked(tmp_path, name, replace=None, level=6):
    """The small model's torch.save file re-packed with deflated records; ``replace`` gives the
    bytes of its first storage record (a crafted file)."""
    import zipfile

    plain = tmp_path / "plain.pth"
    torch.save(DiNAT(**SMALL).state_dict(), plain)
    out = tmp_path / name
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if replace is not None and info.filename.endswith("/data/0"):
                data = replace
            dst.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=level)
    return out


def test_a_small_file_that_expands_to_much_more_is_refused_before_loading(tmp_path, monkeypatch):
    bomb = _repacked(tmp_path, "bomb.pth", replace=bytes(64 << 20), level=9)
    assert os.path.getsize(bomb) < (2 << 20)
    allocated = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: allocated.append(a) or {})  # must not be reached
    with pytest.raises(ValueError, match=rf"^load_pretrained: {escaped(bomb)} is not a checkpoint to load: its \d+ "
                                         r"compressed record\(s\) would expand from .* to 6\d\.\d MiB in memory "
                                         r"\(e\.g\. .*/data/0: 64\.0 MiB\), more than 16x their compressed size"):
        load_pretrained(DiNAT(**SMALL), str(bomb))
    from dinat_backbone.checkpoint import load_checkpoint_file

    with pytest.raises(ValueError, match=r"more than 16x their compressed size"):
        load_checkpoint_file(str(bomb))  # no model: the expansion bound alone
    assert allocated == []


def test_compressed_records_are_bounded_by_the_models_own_size(tmp_path):
    """A record that compresses plausibly (2x) but is far larger than the model's whole state."""
    model = DiNAT(**SMALL)
    model_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    generator = torch.Generator().manual_seed(0)
    nibbles = torch.randint(0, 16, (20 * model_bytes,), dtype=torch.uint8, generator=generator).numpy().tobytes()
    big = _repacked(tmp_path, "big.pth", replace=nibbles)
    with pytest.raises(ValueError, match=r"would expand from .* in memory .*more than 16x the model's own "
                                         r"weights \(\d+\.\d [KM]iB\)"):
        load_pretrained(model, str(big))


def test_a_repacked_checkpoint_still_loads(tmp_path):
    """Deflated records of real weights expand about 1.1x: within both bounds."""
    torch.manual_seed(0)
    path = _repacked(tmp_path, "deflated.pth")
    reference = torch.load(tmp_path / "plain.pth", weights_only=True)
    model = DiNAT(**SMALL)
    load_pretrained(model, str(path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())


# ----------------------------------------------------------------------------------------------
# errors that name the file and come before the work (issue 20)
# ----------------------------------------------------------------------------------------------
def test_a_bad_safetensors_file_is_named(tmp_path):
    """safetensors' own SafetensorError names no file."""
    import safetensors.torch

    good = tmp_path / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in DiNAT(**SMALL).state_dict().items()}, str(good))
    data = good.read_bytes()
    for name, content in (("cut.safetensors", data[: len(data) // 2]), ("text.safetensors", b"hello, not a file\n"),
                          ("header.safetensors", (40).to_bytes(8, "little") + b"{not json" + bytes(40))):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(RuntimeError, match=rf"^load_pretrained: {escaped(path)} is not a readable \.safetensors "
                                               r"file \(.+\): fetch or write it again") as err:
            load_pretrained(DiNAT(**SMALL), str(path))
        assert err.value.__cause__ is None and err.value.__suppress_context__
    load_pretrained(DiNAT(**SMALL), str(good))


def test_a_missing_path_or_a_folder_is_named_before_reading(tmp_path):
    from dinat_backbone.checkpoint import load_checkpoint_file

    with pytest.raises(FileNotFoundError, match=rf"^load_pretrained: checkpoint not found: {escaped(tmp_path)}/no"):
        load_checkpoint_file(str(tmp_path / "no.pth"))
    (tmp_path / "run").mkdir()
    torch.save({}, tmp_path / "run" / "iter_10.pth")
    with pytest.raises(IsADirectoryError, match=rf"^load_pretrained: {escaped(tmp_path)}/run is a folder, not a "
                                                r"checkpoint file: give the file inside it \(it holds iter_10\.pth\)"):
        load_pretrained(DiNAT(**SMALL), str(tmp_path / "run"))


def _usage_error(tool, argv, capsys):
    with pytest.raises(SystemExit) as info:
        tool.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_convert_checkpoint_checks_its_paths_before_reading(tmp_path, capsys, monkeypatch):
    """A missing or folder source was a traceback; an unwritable output failed after the loading."""
    from conftest import load_tool

    tool = load_tool("convert_checkpoint")
    src = tmp_path / "w.pth"
    torch.save(DiNAT(**SMALL).state_dict(), src)
    read = []
    monkeypatch.setattr(tool, "load_checkpoint_file", lambda *a, **k: read.append(a))  # must not be reached
    assert _usage_error(tool, [str(tmp_path / "no.pth"), str(tmp_path / "o.pth")], capsys).endswith(
        f"error: checkpoint not found: {tmp_path}/no.pth")
    assert _usage_error(tool, [str(tmp_path), str(tmp_path / "o.pth")], capsys).endswith(
        f"error: {tmp_path} is a folder: give the checkpoint file inside it")
    # the output: tools/_outputs.check_outputs, the one output check of every tool
    assert _usage_error(tool, [str(src), str(tmp_path)], capsys).endswith(
        f"error: DST {tmp_path}: is a folder: give a file name")
    assert "error: DST {0}/nope/o.pth: cannot be written: its folder {0}/nope does not exist".format(tmp_path) in \
        _usage_error(tool, [str(src), str(tmp_path / "nope" / "o.pth")], capsys)
    assert f"({src} is a file, not a folder)" in _usage_error(tool, [str(src), str(src / "o.pth")], capsys)
    # /proc takes no new files, even from root (a read-only folder would not stop root)
    assert "error: DST /proc/o.pth: cannot be written" in _usage_error(tool, [str(src), "/proc/o.pth"], capsys)
    assert read == []
