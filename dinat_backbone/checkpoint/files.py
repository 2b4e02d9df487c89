"""Reading a checkpoint (path, URL, ``.safetensors`` file or loaded object) safely, and the
diagnostics of files that are no usable checkpoint: every error names the file."""
from __future__ import annotations

import pickle
import zipfile
from typing import Mapping, Optional, Union

import torch

from .convert import _unwrap


# what torch.save writes: a zip archive (torch >= 1.6) or a pickle (the legacy format, protocol 2)
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")


def _describe(source) -> str:
    return "the checkpoint (a dict)" if isinstance(source, Mapping) else str(source)


def _file_head(path: str) -> Optional[bytes]:
    """The first bytes of a local file (None for a URL or a path that is not a file)."""
    import os

    if not os.path.isfile(path):
        return None  # torch.load's FileNotFoundError / IsADirectoryError already name the path
    with open(path, "rb") as f:
        return f.read(16)


def _check_not_empty(path: str):
    """A zero-byte file (an interrupted download or save) fails inside torch.load with an
    ``EOFError`` without a message."""
    if _file_head(path) == b"":
        raise ValueError(f"load_pretrained: {path} is empty (0 bytes), not a checkpoint; the download or the "
                         "save that wrote it was probably interrupted: fetch or write it again")


def _foreign_head(path: str) -> Optional[bytes]:
    """The first bytes of a local file that torch.save did not write (text, an HTML error page
    saved instead of the checkpoint); None for a torch file, a URL or a missing path."""
    head = _file_head(path)
    return head if head is not None and not head.startswith(_TORCH_SAVE_MAGIC) else None


def _unreadable(source: str, exc: BaseException) -> RuntimeError:
    """The error for a file torch.load cannot parse: a foreign file fails in the unpickler with an
    ``IndexError`` / ``KeyError`` / ``UnpicklingError``, a cut-off one in the zip reader."""
    head = _foreign_head(source)
    if head is not None:
        what = (f"is not a PyTorch checkpoint (torch.save writes a zip archive or a pickle; the file starts "
                f"with {head!r}): check the path")
    else:
        what = "is not a readable checkpoint (truncated or corrupted?): fetch or write it again"
    return RuntimeError(f"load_pretrained: {source} {what}; torch.load raised {type(exc).__name__}: {exc}")


def _read_file(source, map_location="cpu"):
    if isinstance(source, Mapping):
        return source
    source = str(source)
    is_url = source.startswith(("http://", "https://"))
    if not is_url:
        _check_not_empty(source)
    if source.endswith(".safetensors"):  # HF hub files
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise RuntimeError(f"load_pretrained: reading {source} needs `pip install safetensors`") from exc
        if is_url:
            raise ValueError(f"load_pretrained: download {source} first and pass the local path")
        return load_file(source, device=str(map_location))
    try:
        if is_url:
            return torch.hub.load_state_dict_from_url(source, map_location=map_location, progress=False,
                                                      check_hash=False, weights_only=True)
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if source.endswith(".pkl") and not zipfile.is_zipfile(source):
            # detectron2's .pkl weights (e.g. the authors' dinat_large_in22k_224.pkl for Mask2Former)
            # are written with pickle.dump, not torch.save: torch.load cannot read them at all
            raise RuntimeError(
                f"load_pretrained: {source} is a plain pickle (detectron2's .pkl format, written with "
                "pickle.dump), which torch.load cannot read safely. If you trust the file, load it yourself "
                "with pickle.load(open(path, 'rb')) and pass the resulting dict, or pass the .pth file it "
                "was made from.") from exc
        if _foreign_head(source) is not None:
            # a text file is a "pickle" of unknown opcodes, which weights_only refuses first
            raise _unreadable(source, exc) from exc
        raise RuntimeError(
            f"load_pretrained: {source} holds objects other than tensors and plain containers, which "
            f"torch.load(weights_only=True) refuses ({exc}). If you trust the file, load it yourself with "
            "torch.load(path, map_location='cpu', weights_only=False) and pass the resulting dict."
        ) from exc
    except (EOFError, IndexError, KeyError) as exc:  # the unpickler on a truncated / foreign file
        raise _unreadable(source, exc) from exc
    except RuntimeError as exc:
        if "PytorchStreamReader" in str(exc) or "unexpected EOF" in str(exc):  # cut off or damaged
            raise _unreadable(source, exc) from exc
        raise


def load_checkpoint_file(checkpoint: Union[str, Mapping], map_location="cpu") -> Mapping:
    """Read a checkpoint (path, URL, ``.safetensors`` file or already loaded object) safely
    (``weights_only``) and strip its training wrappers (``state_dict`` / ``model`` / ``module``).

    The result still has the file's own key layout; :func:`convert_checkpoint` converts it. Every
    unusable source is an error naming it (see :func:`load_pretrained`).
    """
    return _unwrap(_read_file(checkpoint, map_location), _describe(checkpoint), "load_pretrained")
