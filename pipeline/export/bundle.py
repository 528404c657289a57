"""Reading bundles safely: a MediaPipe ``.task`` is a plain zip (``TF_LITE_PREFILL_DECODE``,
``TOKENIZER_MODEL``, ``METADATA``); a ``.litertlm`` is LiteRT-LM's own container.

A ``.task`` from elsewhere is checked before anything is read from it: every member name
must be a plain relative path that stays inside the folder it would be unpacked to (no
``..``, no absolute path, no drive letter, no symlink), the model and tokenizer members must
be there, and sizes must be sane. :func:`extract_task` writes nothing until every member has
passed, and only below the folder it is given.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.errors import ExportError
from pipeline.utils.fileio import atomic_write

TASK_TFLITE = "TF_LITE_PREFILL_DECODE"
TASK_TOKENIZER = "TOKENIZER_MODEL"
TASK_METADATA = "METADATA"
TASK_REQUIRED = (TASK_TFLITE, TASK_TOKENIZER)
TFLITE_MAGIC = b"TFL3"
LITERTLM_MAGIC = b"LITERTLM"
MAX_MEMBER_BYTES = 32 << 30


@dataclass(frozen=True)
class TaskMember:
    name: str
    size: int


@dataclass(frozen=True)
class TaskInfo:
    path: Path
    members: tuple[TaskMember, ...]
    stop_tokens: tuple[str, ...]
    """The stop tokens found in METADATA (``<eos>``, ``<end_of_turn>`` when present)."""
    start_token: str | None


def _bad(path: Path, what: str, hint: str | None = None) -> ExportError:
    return ExportError(
        f"{path} is not a usable .task bundle: {what}",
        hint=hint or "Export the bundle again with `gemma-tui export`; do not edit it by hand.",
    )


def _unsafe_name(name: str) -> str | None:
    """Why a zip member name would escape its folder, or None."""
    if not name or "\x00" in name:
        return "an empty or NUL-containing name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if any(p == ".." for p in parts):
        return "a '..' component"
    return None


def check_task(path: str | os.PathLike[str]) -> TaskInfo:
    """Validate a ``.task`` file without extracting it; :class:`ExportError` naming the
    file and the offending member otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p} does not exist")
    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
            for info in infos:
                why = _unsafe_name(info.filename)
                if why:
                    raise _bad(
                        p,
                        f"member {info.filename!r} has {why} and would be written outside "
                        "the folder it is unpacked to (zip-slip)",
                        hint="Do not use this file: it was not made by the bundler. "
                        "Nothing was extracted.",
                    )
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise _bad(p, f"member {info.filename!r} is a symbolic link")
                if info.file_size > MAX_MEMBER_BYTES:
                    raise _bad(p, f"member {info.filename!r} claims {info.file_size} bytes")
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise _bad(p, "it has duplicate member names")
            missing = [n for n in TASK_REQUIRED if n not in names]
            if missing:
                raise _bad(p, f"it lacks {', '.join(missing)} (members: {', '.join(names)})")
            with z.open(TASK_TFLITE) as f:
                head = f.read(8)
            if head[4:8] != TFLITE_MAGIC:
                raise _bad(p, f"{TASK_TFLITE} is not a TFLite flatbuffer")
            metadata = z.read(TASK_METADATA) if TASK_METADATA in names else b""
    except zipfile.BadZipFile as exc:
        raise _bad(p, f"not a zip file ({exc})") from exc
    except OSError as exc:
        raise ExportError(f"cannot read {p}: {exc}") from exc
    stops = tuple(t for t in ("<eos>", "<end_of_turn>") if t.encode() in metadata)
    start = "<bos>" if b"<bos>" in metadata else None
    return TaskInfo(p, tuple(TaskMember(i.filename, i.file_size) for i in infos), stops, start)


def extract_task(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[Path]:
    """Unpack a checked ``.task`` into ``dest`` (created); every member is validated first,
    so a bad member means nothing is written at all."""
    info = check_task(path)
    root = Path(dest).resolve()
    targets = []
    for member in info.members:
        target = (root / member.name).resolve()
        if root not in target.parents:
            raise _bad(info.path, f"member {member.name!r} resolves outside {root}")
        targets.append((member.name, target))
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(info.path) as z:
        for name, target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            data = z.read(name)
            atomic_write(target, lambda f, data=data: f.write(data))
    return [t for _, t in targets]


def check_litertlm(path: str | os.PathLike[str]) -> int:
    """The size of a ``.litertlm`` file after checking its magic bytes."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
        size = p.stat().st_size
    except OSError as exc:
        raise ExportError(f"cannot read {p}: {exc}") from exc
    if head != LITERTLM_MAGIC:
        raise ExportError(
            f"{p} is not a .litertlm file (it starts with {head!r})",
            hint="Export it again with `gemma-tui export RUN --format litertlm`.",
        )
    return size
