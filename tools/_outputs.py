"""Output files of the tools: checked before the work, written atomically.

Every tool that writes a file goes through two steps:

* :func:`check_outputs` before any work (loading, building, exporting): an output that is one of
  the tool's inputs (the same file after symlinks and hard links), an output given twice, an
  output that is a folder and an output whose folder cannot be written are usage errors naming
  the path. Without it ``convert_checkpoint.py X X`` replaced the detector checkpoint with its
  backbone, and an unwritable ONNX path failed only after a minutes-long export.
* :func:`atomic_output` for the writing itself: the writer gets a path inside a private temporary
  folder next to the destination (same file system, same base name, so writers that derive
  side files or formats from the name still work); on success every file written there is moved
  into place with :func:`os.replace` (side files first, the named file last), on failure nothing
  at the destination changes. An interrupted run never leaves a half-written file under the
  real name, and the previous file stays intact until the new one is complete.

Standard library only: the torch-only tools and the benchmarks import it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Dict, Iterator, Optional


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name the same file: equal after resolving symlinks (also when
    the file does not exist yet) or the same inode (hard links, bind mounts)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: then they are not one file
        return False


def output_problem(path: str, inputs: Optional[Dict[str, str]] = None) -> Optional[str]:
    """Why ``path`` cannot be written as an output (``None`` when it can): it is one of ``inputs``
    (``{what: path}``; URLs and empty values are skipped), a folder, or in a folder that does not
    exist or cannot be written. Writability is probed by creating (and removing) a file there,
    which also holds for root and read-only mounts, where permission bits say nothing."""
    for what, source in (inputs or {}).items():
        if source and "://" not in str(source) and same_file(path, source):
            return f"is the {what} ({source}); writing it would destroy the input: give another output path"
    if os.path.isdir(path):
        return "is a folder: give a file name"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parent = folder
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        hint = f"{parent} is a file, not a folder" if os.path.isfile(parent) else f"create it first (mkdir -p {folder})"
        return f"cannot be written: its folder {folder} does not exist ({hint})"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    except OSError as e:
        return f"cannot be written: folder {folder}: {e.strerror or e}"
    os.close(fd)
    os.unlink(probe)
    return None


def check_outputs(outputs: Dict[str, Optional[str]], inputs: Optional[Dict[str, str]] = None,
                  error=None) -> None:
    """Refuse bad outputs before any work. ``outputs``: ``{option: path}`` (``None`` entries are
    unused options); ``inputs``: ``{what: path}`` the tool reads. ``error`` (e.g. an argparse
    parser's ``error``) reports the message; by default :class:`SystemExit` with it."""
    fail = error or _exit
    given = [(name, path) for name, path in outputs.items() if path]
    for i, (name, path) in enumerate(given):
        for other, other_path in given[:i]:
            if same_file(path, other_path):
                fail(f"{name} {path}: is also {other}: give each output its own file")
        problem = output_problem(path, inputs)
        if problem:
            fail(f"{name} {path}: {problem}")


def _exit(message: str) -> None:
    raise SystemExit(message)


def _partial_name(path: str) -> str:
    return f".{os.path.basename(path)}.partial-"


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """``with atomic_output(dst) as tmp: write(tmp)``: ``tmp`` has ``dst``'s base name inside a
    private temporary folder beside ``dst``; when the block ends without an exception every file
    written into that folder replaces its namesake beside ``dst`` (``dst`` itself last), otherwise
    all of it is removed and ``dst`` is left as it was. A ``dst`` that is a symlink is written
    through: its target is replaced, the link stays."""
    path = os.path.realpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    staging = tempfile.mkdtemp(prefix=_partial_name(path), dir=folder)
    try:
        tmp = os.path.join(staging, os.path.basename(path))
        yield tmp
        if not os.path.exists(tmp):
            raise RuntimeError(f"the writer of {path} wrote nothing")
        # mkdtemp's folder is 0700; the files get the permissions a plain open() would give
        umask = os.umask(0)
        os.umask(umask)
        names = sorted(os.listdir(staging), key=lambda n: n == os.path.basename(path))
        for name in names:
            src = os.path.join(staging, name)
            if os.path.isfile(src) and not os.path.islink(src):
                os.chmod(src, 0o666 & ~umask)
                _fsync(src)  # the data on disk before the name points at it
            os.replace(src, os.path.join(folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write(text)
