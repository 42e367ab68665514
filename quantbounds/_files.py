"""Atomic file writes, one implementation for every file quantbounds writes whole.

:func:`atomic_write_bytes` writes a temp file in the target's folder, fsyncs it, renames it
over the target and fsyncs the folder, so a reader (another process, another host on a
shared filesystem, or this one after a crash) sees the old file or the whole new one, never
part of it. ``verdicts.results.write_json_atomic`` (result JSON), the split Monte Carlo grid
(``epsba.grid_jobs``: one ``.npy`` per cell) and the sweep executor (``real_runs.submit``:
one record per run, the merged records file) all write through it. A leaf module: it
imports nothing from quantbounds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so a rename inside it is durable (a no-op where folders refuse it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems refuse directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, keep_mode: bool = False) -> Path:
    """Write ``data`` to ``path`` (parents created) so that a reader sees the old file or the
    whole new one: a temp file in the same folder, fsync, rename over ``path``, fsync of the
    folder. The file is made readable by all (mkstemp creates 0600; results are meant to be
    read), or, with ``keep_mode``, keeps an existing file's permissions (a user's file
    rewritten in place). An interrupted writer leaves the old file and no temp file. Returns
    ``path``."""
    path = Path(path)
    mode = path.stat().st_mode & 0o7777 if keep_mode and path.exists() else 0o644
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path
