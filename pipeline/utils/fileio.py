"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed over the
target, so a crash or a full disk never leaves a half-written file under the final name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def fsync_dir(path: Path) -> None:
    """fsync a folder so a rename inside it survives a power cut (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], object],
    *,
    mode: int = 0o644,
    sync_dir: bool = False,
) -> Path:
    """Write ``path`` by calling ``write(binary_file)`` on a temporary file beside it, fsync,
    set ``mode`` (mkstemp makes 0600) and rename; ``sync_dir`` also fsyncs the folder."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(target.parent)
    return target


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, **kwargs: object) -> Path:
    return atomic_write(path, lambda f: f.write(data), **kwargs)  # type: ignore[arg-type]


def write_text_atomic(path: str | os.PathLike[str], text: str, **kwargs: object) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), **kwargs)
