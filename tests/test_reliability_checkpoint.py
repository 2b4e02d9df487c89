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
