"""The ``torch.load(weights_only=True)`` allow-list for mmengine 0.10.7 training checkpoints.

torch >= 2.6 loads with ``weights_only=True`` by default, and ``--resume`` (and ``tools/test.py``
on a training checkpoint) failed on ``HistoryBuffer`` and numpy arrays / scalars in the message
hub. :func:`dinat_backbone.mm.setup_training` adds exactly :func:`mm_safe_globals` to torch's
process-wide allow-list; ``weights_only`` itself is never turned off. Importing this module changes
nothing.
"""
from __future__ import annotations

import importlib
import pickle

__all__ = ["mm_safe_globals"]

_HB_STATS = ("min", "max", "current", "mean")
#: numpy dtypes found in mmengine / mmdet / mmseg training checkpoints (message hub)
_CHECKPOINT_DTYPES = ("float64", "int64")


def _history_buffer_getattr(obj, name):
    """Stand-in for ``builtins.getattr`` while unpickling with ``weights_only=True``.

    mmengine checkpoints pickle ``HistoryBuffer``'s statistics functions as
    ``getattr(HistoryBuffer, 'mean')`` (protocol-2 pickling of a nested qualname). Only exactly
    that is allowed: the class ``HistoryBuffer`` and the name of one of its registered statistics.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed = set(_HB_STATS) | set(getattr(HistoryBuffer, "_statistics_methods", {}))
    if obj is HistoryBuffer and isinstance(name, str) and name in allowed:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f"weights_only load: getattr({obj!r}, {name!r}) is not allowed (dinat_backbone.mm allows only "
        f"getattr(HistoryBuffer, <statistics method>) for mmengine checkpoints)"
    )


def mm_safe_globals() -> list:
    """Exactly the globals an mmengine 0.10.7 training checkpoint pickles besides tensors.

    Found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on real checkpoints
    written by ``tools/train.py`` (numpy 1.26 and numpy 2.x): the message hub stores
    ``HistoryBuffer`` objects holding numpy arrays (``_reconstruct``, ``ndarray``, ``dtype``) and
    numpy scalars (``scalar``), and references the buffer's statistics methods through
    ``builtins.getattr``, which is served by :func:`_history_buffer_getattr` (only
    ``getattr(HistoryBuffer, 'min' | 'max' | 'current' | 'mean' | registered)``, never the real
    ``getattr``). Entries are objects or ``(object, pickled_name)`` pairs; numpy 1.x pickles
    ``numpy.core.multiarray.*``, numpy 2.x ``numpy._core.multiarray.*``: both names are mapped to
    the installed numpy's functions, so a checkpoint written under either numpy resumes.
    """
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    numpy2 = int(np.__version__.split(".")[0]) >= 2
    multiarray = importlib.import_module("numpy._core.multiarray" if numpy2 else "numpy.core.multiarray")
    out = [HistoryBuffer, (_history_buffer_getattr, "builtins.getattr")]
    # the same two functions under both spellings: checkpoints written under either numpy load
    for pickled_module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out.append((multiarray._reconstruct, f"{pickled_module}._reconstruct"))
        out.append((multiarray.scalar, f"{pickled_module}.scalar"))
    out += [np.ndarray, np.dtype]
    # numpy >= 1.25 builds dtype instances of per-type classes (numpy.dtypes.Float64DType, ...);
    # the unpickler's BUILD step needs the classes of the dtypes the checkpoint holds:
    # HistoryBuffer arrays (float64 values, int64 counts) and the scalar metrics.
    for t in _CHECKPOINT_DTYPES:
        cls = type(np.dtype(t))
        if cls is not np.dtype:
            out.append(cls)
    return out
