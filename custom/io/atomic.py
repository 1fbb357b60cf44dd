"""Atomic file writes: a reader never sees a half-written file, and a crashed or killed process loses
nothing already written (the rename is atomic; the data is not fsynced, so a power loss is not covered)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_json_atomic", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    Args:
        path: the final destination.
        suffix: suffix of the temporary file (defaults to the full suffix of ``path``, so writers
            that infer the format from the name, such as nibabel, still work).

    Yields:
        The temporary path to write to. On an exception the temporary file is removed and
        ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(final.suffixes)
    tmp_path = _create_beside(final, suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _create_beside(final: Path, suffix: str) -> Path:
    """Create an empty, unique temporary file beside ``final`` and return its path.

    Opened with mode 0666, so the kernel applies the process umask as for a plain ``open()``
    (``tempfile.mkstemp`` gives 0600, and reading the umask with ``os.umask`` sets it to 0 for a
    moment, for every thread of the process).
    """
    for _ in range(100):
        candidate = final.parent / f".{final.name}.{secrets.token_hex(6)}.part{suffix}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"{final.parent}: no free temporary name for {final.name}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=default) + "\n")
