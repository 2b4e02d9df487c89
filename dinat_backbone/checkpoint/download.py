"""Downloading a checkpoint URL into a cache keyed by the whole URL.

``torch.hub.load_state_dict_from_url`` caches by the file name alone: ``.../a/model.pth`` and then
``.../b/model.pth`` gave b the weights of a, and a failed download (an HTML error page) stayed in
the cache and kept failing after the server was fixed. Here the cache file's name carries a hash
of the whole URL, a download goes to a temporary file in the cache folder and is moved into place
(an atomic rename) only when it is complete and looks like a checkpoint; whatever fails is deleted.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import urllib.parse
import zipfile
import torch

#: seconds without data after which a download is abandoned
DOWNLOAD_TIMEOUT = 60
# what a downloaded checkpoint may start with: torch.save's zip archive or legacy pickle, and a
# .safetensors file (an 8-byte little-endian header length, then the JSON header)
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")


class CheckpointDownloadError(RuntimeError):
    """A checkpoint URL could not be downloaded (no network, an HTTP error, an incomplete or
    non-checkpoint answer); nothing was cached."""


def is_url(source) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def cache_dir() -> str:
    """``<torch hub dir>/checkpoints/dinat_backbone`` (``$TORCH_HOME/hub/...``, default ``~/.cache/torch``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", "dinat_backbone")


def cached_path(url: str) -> str:
    """The cache file of ``url``: its file name with the first 16 hex digits of the URL's SHA-256
    before the suffix (``model-<hash>.pth``), so that two URLs never share a file."""
    name = os.path.basename(urllib.parse.urlparse(url).path) or "checkpoint"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    stem, suffix = os.path.splitext(name)
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return os.path.join(cache_dir(), f"{stem}-{digest}{suffix}")


def _offline_hint(url: str) -> str:
    name = os.path.basename(urllib.parse.urlparse(url).path) or "checkpoint.pth"
    return (f"Without network access, download it elsewhere and pass the local file instead "
            f"(load_pretrained(model, '/path/to/{name}'), init_cfg=dict(type='Pretrained', "
            f"checkpoint='/path/to/{name}'), --checkpoint /path/to/{name}), or build the model with "
            "init_cfg=None (random weights)")


def _check_download(tmp: str, url: str, content_type: str) -> None:
    """A complete download that is not a checkpoint (an HTML error or login page served with status
    200, a truncated archive) is an error and is not cached."""
    size = os.path.getsize(tmp)
    with open(tmp, "rb") as f:
        head = f.read(64)
    what = None
    if size == 0:
        what = "the server sent 0 bytes"
    elif "html" in content_type.lower() or head.lstrip()[:1] == b"<":
        what = f"the server sent an HTML page (Content-Type {content_type or 'not given'}, starting {head[:24]!r})"
    elif url.lower().split("?")[0].endswith(".safetensors"):
        if size < 10 or head[8:9] != b"{":
            what = f"the answer is not a .safetensors file (it starts with {head[:16]!r})"
    elif not head.startswith(_TORCH_SAVE_MAGIC):
        what = (f"the answer is not a PyTorch checkpoint (torch.save writes a zip or a pickle; it starts with "
                f"{head[:16]!r})")
    elif head.startswith(b"PK") and not zipfile.is_zipfile(tmp):
        what = f"the answer is an incomplete zip archive ({size} bytes, no central directory)"
    if what:
        raise CheckpointDownloadError(f"load_pretrained: downloading {url} failed: {what}; nothing was cached. "
                                      "Check the URL in a browser (or retry later)")


def download_checkpoint(url: str, timeout: float = DOWNLOAD_TIMEOUT, logger=None) -> str:
    """The local path of ``url``'s checkpoint: the cached file when there is one, else downloaded
    into :func:`cached_path` (complete and checked before the rename; nothing stays behind on a
    failure). Raises :class:`CheckpointDownloadError` naming the URL and what to do instead."""
    import urllib.error  # here: importing the package stays light (urllib.request pulls in http / ssl)
    import urllib.request

    path = cached_path(url)
    if os.path.isfile(path):
        return path
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".part")
    except OSError as exc:
        raise CheckpointDownloadError(
            f"load_pretrained: cannot write the download cache {folder} ({exc.strerror or exc}); set TORCH_HOME "
            "to a writable folder, or download the file yourself and pass its path") from None
    if logger is not None:
        logger.info("load_pretrained: downloading %s to %s", url, path)
    try:
        with os.fdopen(fd, "wb") as out:
            received, expected, content_type = 0, None, ""
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "dinat-backbone"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    content_type = response.headers.get("Content-Type", "") or ""
                    length = response.headers.get("Content-Length")
                    expected = int(length) if length and length.isdigit() else None
                    while True:
                        chunk = response.read(1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
                        received += len(chunk)
            except urllib.error.HTTPError as exc:
                raise CheckpointDownloadError(
                    f"load_pretrained: downloading {url} failed: the server answered {exc.code} {exc.reason}; "
                    f"nothing was cached. Check the URL. {_offline_hint(url)}") from None
            except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise CheckpointDownloadError(
                    f"load_pretrained: downloading {url} failed ({reason}); nothing was cached. "
                    f"{_offline_hint(url)}") from None
            except Exception as exc:  # http.client.IncompleteRead and other cut-off answers
                raise CheckpointDownloadError(
                    f"load_pretrained: downloading {url} failed after {received} bytes "
                    f"({type(exc).__name__}: {exc}); nothing was cached. Retry. {_offline_hint(url)}") from None
        if expected is not None and received != expected:
            raise CheckpointDownloadError(
                f"load_pretrained: downloading {url} failed: {received} of {expected} bytes arrived (the connection "
                "was cut); nothing was cached. Retry")
        _check_download(tmp, url, content_type)
        os.replace(tmp, path)  # atomic: the cache holds a whole, checked file or nothing
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def local_checkpoint(path_or_url: str, logger=None) -> str:
    """A URL's cached download (:func:`download_checkpoint`), a path as it is: for callers that hand
    the file to another loader (mmengine's ``load_from`` / ``resume`` cache URLs by file name)."""
    return download_checkpoint(path_or_url, logger=logger) if is_url(path_or_url) else path_or_url


__all__ = ["CheckpointDownloadError", "download_checkpoint", "local_checkpoint", "cached_path", "cache_dir", "is_url",
           "DOWNLOAD_TIMEOUT"]
