"""Writing files so that a reader (or a process killed mid-write) never sees half of one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | Path, fsync: bool = False) -> Iterator[Path]:
    """A temporary path next to ``final`` (``.<name>.<pid>.tmp``, same file system) to write to; once the
    block finishes without error it replaces ``final`` in one rename, otherwise it is removed and ``final`` is
    left as it was. ``fsync``: flush the file to disk before the rename (for results that must survive a
    crash).

        with atomic_path("report.json") as tmp:
            tmp.write_text(...)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
