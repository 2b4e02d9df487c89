"""Reading a checkpoint (path, URL, ``.safetensors`` file or loaded object) safely, and the
diagnostics of files that are no usable checkpoint: every error names the file, and comes before
any large allocation.

* ``torch.load(weights_only=True)`` always; the non-tensor objects of the project's own training
  checkpoints (mmengine's message hub: ``HistoryBuffer`` objects holding numpy arrays) are read
  as inert stand-ins (:class:`TrainingStateObject`) for exactly the globals they pickle, without
  importing mmengine or numpy and without changing the process-wide allow-list. Any other object
  is an error listing what the file holds.
* URLs are downloaded by :mod:`.download` (a cache keyed by the whole URL).
* A zip record that would be decompressed into memory (``torch.save`` never compresses) must not
  expand beyond what a checkpoint can hold (see :func:`check_zip_records`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import threading
import zipfile
from typing import Mapping, Optional, Union

import torch

from .convert import _unwrap
from .download import download_checkpoint, is_url

_logger = logging.getLogger("dinat_backbone.checkpoint")

# what torch.save writes: a zip archive (torch >= 1.6) or a pickle (the legacy format, protocol 2)
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")


def _describe(source) -> str:
    return "the checkpoint (a dict)" if isinstance(source, Mapping) else str(source)


def _file_head(path: str) -> Optional[bytes]:
    """The first bytes of a local file (None for a path that is not a file)."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return f.read(16)


def _foreign_head(path: str) -> Optional[bytes]:
    """The first bytes of a local file that torch.save did not write (text, an HTML error page
    saved instead of the checkpoint); None for a torch file or a missing path."""
    head = _file_head(path)
    return head if head is not None and not head.startswith(_TORCH_SAVE_MAGIC) else None


class _Source:
    """A local checkpoint file and how messages name it: the path, or for a URL the cached
    download and its URL (a damaged cache file is deleted to download it again)."""

    def __init__(self, path: str, url: Optional[str] = None):
        self.path, self.url = path, url
        self.shown = f"{path} (the cached download of {url})" if url else path
        self.again = ("delete it to download it again" if url else "fetch or write it again")


def _check_local_file(src: _Source) -> None:
    """A missing path, a folder or an empty file is named before torch.load sees it."""
    path = src.path
    if os.path.isdir(path):
        inside = sorted(f for f in os.listdir(path) if f.endswith((".pth", ".pt", ".safetensors", ".bin")))
        hint = f" (it holds {', '.join(inside[:3])})" if inside else ""
        raise IsADirectoryError(f"load_pretrained: {path} is a folder, not a checkpoint file: give the file "
                                f"inside it{hint}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_pretrained: checkpoint not found: {path} (a local path, or an "
                                "http(s):// URL)")
    if os.path.getsize(path) == 0:  # torch.load fails with a bare EOFError
        raise ValueError(f"load_pretrained: {src.shown} is empty (0 bytes), not a checkpoint; the download or the "
                         f"save that wrote it was probably interrupted: {src.again}")


def _unreadable(src: _Source, exc: BaseException) -> RuntimeError:
    """The error for a file torch.load cannot parse: a foreign file fails in the unpickler with an
    ``IndexError`` / ``KeyError`` / ``UnpicklingError``, a cut-off one in the zip reader."""
    head = _foreign_head(src.path)
    if head is not None:
        what = (f"is not a PyTorch checkpoint (torch.save writes a zip archive or a pickle; the file starts "
                f"with {head!r}): check the path")
    else:
        what = f"is not a readable checkpoint (truncated or corrupted?): {src.again}"
    return RuntimeError(f"load_pretrained: {src.shown} {what}; torch.load raised {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------------------------
# the non-tensor objects of training checkpoints, read without their classes
# ----------------------------------------------------------------------------------------------
class TrainingStateObject:
    """An object of a training checkpoint's bookkeeping (mmengine's ``HistoryBuffer``, a numpy
    array, dtype or scalar in the message hub) read as inert data: its pickled arguments and state
    are kept, none of its class's code runs. Weights never are such objects."""

    pickled_name = "?"

    def __init__(self, *args):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{self.pickled_name} read as a TrainingStateObject>"


class _HistoryBufferStandIn(TrainingStateObject):
    pickled_name = "mmengine.logging.history_buffer.HistoryBuffer"


class _NdarrayStandIn(TrainingStateObject):
    pickled_name = "numpy.ndarray"


def _numpy_object(pickled_name: str):
    def build(*args):
        obj = TrainingStateObject(*args)
        obj.pickled_name = pickled_name
        return obj

    build.__qualname__ = build.__name__ = f"standin_{pickled_name.replace('.', '_')}"
    return build


def _history_buffer_getattr(obj, name):
    """``builtins.getattr`` as mmengine checkpoints pickle it: ``getattr(HistoryBuffer, 'mean')``
    (a statistics method). Nothing else is served."""
    is_buffer = obj is _HistoryBufferStandIn or (
        isinstance(obj, type) and f"{obj.__module__}.{obj.__qualname__}" == _HistoryBufferStandIn.pickled_name)
    if is_buffer and isinstance(name, str) and name.isidentifier() and not name.startswith("_"):
        return _numpy_object(f"HistoryBuffer.{name}")()
    raise pickle.UnpicklingError(f"getattr({obj!r}, {name!r}) is not read from a checkpoint (only "
                                 "getattr(HistoryBuffer, <statistics method>) of mmengine's message hub)")


def _training_state_globals() -> dict:
    """Pickled name -> stand-in, for exactly the globals an mmengine training checkpoint holds
    besides tensors (numpy 1.x pickles ``numpy.core.multiarray``, numpy 2.x ``numpy._core.multiarray``)."""
    out = {_HistoryBufferStandIn.pickled_name: _HistoryBufferStandIn, "builtins.getattr": _history_buffer_getattr,
           "numpy.ndarray": _NdarrayStandIn, "numpy.dtype": _numpy_object("numpy.dtype"),
           # the BUILD step of a stand-in needs its class in the allow-list (never pickled by a real file)
           f"{__name__}.TrainingStateObject": TrainingStateObject}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        for name in ("_reconstruct", "scalar"):
            out[f"{module}.{name}"] = _numpy_object(f"{module}.{name}")
    return out


_TRAINING_STATE_GLOBALS = _training_state_globals()
_SAFE_GLOBALS_LOCK = threading.Lock()


def _entry_name(entry) -> str:
    return entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"


@contextlib.contextmanager
def _reading_training_state():
    """torch.load's allow-list plus the stand-ins, for this read only: entries of the same names
    (``dinat_backbone.mm`` / ``tools/train.py`` add the real mmengine classes) are set aside meanwhile,
    so which object serves a name never depends on the allow-list's order."""
    ser = torch.serialization
    if not all(hasattr(ser, f) for f in ("get_safe_globals", "clear_safe_globals", "add_safe_globals")):
        yield  # torch < 2.4: no allow-list; a training checkpoint fails there with the error below
        return
    with _SAFE_GLOBALS_LOCK:
        saved = ser.get_safe_globals()
        ours = [(obj, name) for name, obj in _TRAINING_STATE_GLOBALS.items()]
        ser.clear_safe_globals()
        ser.add_safe_globals([e for e in saved if _entry_name(e) not in _TRAINING_STATE_GLOBALS] + ours)
        try:
            yield
        finally:
            ser.clear_safe_globals()
            ser.add_safe_globals(saved)


def _unsupported_globals(path: str) -> list:
    """The globals of a zip checkpoint that neither torch's allow-list nor the stand-ins cover."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy format, or torch without the function
        return []
    return [g for g in found if g not in _TRAINING_STATE_GLOBALS]


# ----------------------------------------------------------------------------------------------
# zip records decompressed into memory
# ----------------------------------------------------------------------------------------------
#: a compressed record may expand to at most this many times its compressed size (float weights
#: compress by well under 2x; a "zip bomb" by ~1000x)
MAX_EXPANSION = 16
#: ... and, when the model is known, to at most this many times the model's own state size
MAX_MODEL_MULTIPLE = 16
_SLACK = 1 << 20


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def check_zip_records(path: str, shown: Optional[str] = None, model_bytes: Optional[int] = None) -> None:
    """Refuse a zip checkpoint whose compressed records would expand beyond what a checkpoint can
    hold, before torch.load allocates them (it decompresses a record into memory in full, sized by
    the record's header, before any tensor shape is checked).

    ``torch.save`` stores every record uncompressed, so its files are never affected; a compressed
    record (a re-packed file, a crafted one) may expand to at most :data:`MAX_EXPANSION` times its
    compressed size and, when ``model_bytes`` is given (the model's own state size), to at most
    :data:`MAX_MODEL_MULTIPLE` times that in all.
    """
    shown = shown or path
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a (readable) zip: torch.load's own error follows, named by _unreadable
    packed = [i for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if not packed:
        return
    expanded = sum(i.file_size for i in packed)
    compressed = sum(i.compress_size for i in packed)
    limits = [(MAX_EXPANSION * compressed + _SLACK, f"{MAX_EXPANSION}x their compressed size")]
    if model_bytes is not None:
        limits.append((MAX_MODEL_MULTIPLE * model_bytes + _SLACK,
                       f"{MAX_MODEL_MULTIPLE}x the model's own weights ({_human(model_bytes)})"))
    for limit, what in limits:
        if expanded > limit:
            biggest = max(packed, key=lambda i: i.file_size)
            raise ValueError(
                f"load_pretrained: {shown} is not a checkpoint to load: its {len(packed)} compressed record(s) "
                f"would expand from {_human(compressed)} to {_human(expanded)} in memory (e.g. {biggest.filename}: "
                f"{_human(biggest.file_size)}), more than {what}; torch.save never compresses records. "
                "Nothing was read: check where the file comes from")


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
def _read_safetensors(src: _Source, map_location):
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as exc:
        raise RuntimeError(f"load_pretrained: reading {src.shown} needs `pip install safetensors`") from exc
    try:
        return load_file(src.path, device=str(map_location))
    except SafetensorError as exc:  # its message names no file
        raise RuntimeError(f"load_pretrained: {src.shown} is not a readable .safetensors file ({exc}): "
                           f"{src.again}") from None


def _unpickler_reason(exc: BaseException) -> str:
    """The weights-only unpickler's own reason, without torch's advice around it (which suggests
    turning weights_only off)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    reason = text.split(marker, 1)[1] if marker in text else text
    reason = reason.split("Check the documentation of torch.load")[0]
    return " ".join(reason.split())[:300]


def _read_torch(src: _Source, map_location):
    source = src.path
    try:
        with _reading_training_state():
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if source.endswith(".pkl") and not zipfile.is_zipfile(source):
            # detectron2's .pkl weights (e.g. the authors' dinat_large_in22k_224.pkl for Mask2Former)
            # are written with pickle.dump, not torch.save: torch.load cannot read them at all
            raise RuntimeError(
                f"load_pretrained: {src.shown} is a plain pickle (detectron2's .pkl format, written with "
                "pickle.dump), which torch.load cannot read safely. If you trust the file, load it yourself "
                "with pickle.load(open(path, 'rb')) and pass the resulting dict, or pass the .pth file it "
                "was made from.") from None
        if _foreign_head(source) is not None:
            # a text file is a "pickle" of unknown opcodes, which weights_only refuses first
            raise _unreadable(src, exc) from None
        others = _unsupported_globals(source)
        held = f" ({', '.join(others)})" if others else ""
        raise RuntimeError(
            f"load_pretrained: {src.shown} holds objects other than tensors{held}, which are not read from a "
            f"checkpoint (torch.load(weights_only=True) refused: {_unpickler_reason(exc)}). Tensors, plain "
            "containers and mmengine's training state are read; save the weights alone in the program that "
            "wrote the file, e.g. torch.save(checkpoint['state_dict'], 'weights.pth'), and pass that file."
        ) from None
    except (EOFError, IndexError, KeyError) as exc:  # the unpickler on a truncated / foreign file
        raise _unreadable(src, exc) from None
    except RuntimeError as exc:
        if "PytorchStreamReader" in str(exc) or "unexpected EOF" in str(exc):  # cut off or damaged
            raise _unreadable(src, exc) from None
        raise


def _read_file(source, map_location="cpu", model_bytes: Optional[int] = None, logger=None):
    if isinstance(source, Mapping):
        return source
    source = str(source)
    src = _Source(download_checkpoint(source, logger=logger), url=source) if is_url(source) else _Source(source)
    _check_local_file(src)
    if src.path.endswith(".safetensors") or (src.url or "").split("?")[0].endswith(".safetensors"):  # HF hub files
        return _read_safetensors(src, map_location)
    check_zip_records(src.path, src.shown, model_bytes)
    return _read_torch(src, map_location)


def load_checkpoint_file(checkpoint: Union[str, Mapping], map_location="cpu", model_bytes: Optional[int] = None,
                         logger: Optional[logging.Logger] = None) -> Mapping:
    """Read a checkpoint (path, URL, ``.safetensors`` file or already loaded object) safely
    (``weights_only``) and strip its training wrappers (``state_dict`` / ``model`` / ``module``).

    The result still has the file's own key layout; :func:`convert_checkpoint` converts it. Every
    unusable source is an error naming it (see :func:`load_pretrained`); a URL is downloaded once
    into a cache keyed by the whole URL (:func:`dinat_backbone.checkpoint.download.download_checkpoint`).
    ``model_bytes`` (the state size of the model it is for) bounds what compressed records may
    expand to (:func:`check_zip_records`).
    """
    obj = _read_file(checkpoint, map_location, model_bytes, logger)
    return _unwrap(obj, _describe(checkpoint), "load_pretrained")
