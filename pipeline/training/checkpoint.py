"""Checkpoints of a run: the LoRA adapter, the optimizer state and where the run stands.

A checkpoint is a folder, ``<run>/checkpoints/step-000200/`` during the run and
``<run>/final/`` at its end, holding::

    adapter.npz                 the adapter (pipeline.models.lora.save_npz; no pickle)
    adapter_model.safetensors   the same adapter for PEFT (lora.save_peft)
    adapter_config.json
    optimizer.npz               the optimizer state, one array per flattened key
                                ("mu/layers/0/q/a", "count"); no pickle
    state.json                  step, data stream state, seed, losses, profile hash, ...
    profile.toml                the resolved profile

It is written into ``.tmp-<name>-<random>/`` beside its final place, every file fsynced,
then renamed into place, so a checkpoint folder is always complete. An existing folder of
the same name (``final/`` on a resumed run) is swapped out atomically (Linux
``renameat2(RENAME_EXCHANGE)``; elsewhere two renames) and then deleted. A failed write
(a full disk, a file-size limit, ...) removes the temporary folder, leaves every earlier
checkpoint as it was and raises :class:`~pipeline.errors.TrainingError` saying what
happened, where, and how much space is needed and free.

numpy is imported here (cheap); jax is not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import PipelineError, TrainingError
from pipeline.events import EventSink, LogLine, ignore_event
from pipeline.training.runs import now_iso

if TYPE_CHECKING:
    from pipeline.models.lora import Adapter, AdapterMeta
    from pipeline.profiles.schema import Profile

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
ADAPTER_NPZ = "adapter.npz"
OPTIMIZER_NPZ = "optimizer.npz"
STATE_JSON = "state.json"
PROFILE_TOML = "profile.toml"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
REQUIRED_FILES = (ADAPTER_NPZ, PEFT_WEIGHTS, PEFT_CONFIG, OPTIMIZER_NPZ, STATE_JSON)
FORMAT = "gemma-tui-checkpoint"
VERSION = 1

_STEP_DIR = re.compile(r"^step-(\d+)$")
_DTYPES_KEY = "__dtypes__"
"""optimizer.npz entry (JSON in uint8) naming arrays stored as raw bits, e.g. bfloat16."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back by :func:`load_checkpoint`."""

    step: int
    adapter: Adapter
    meta: AdapterMeta
    opt_state: dict[str, np.ndarray]
    """Flattened: ``{"mu/layers/0/q/a": array, ..., "count": array}``
    (:func:`unflatten_arrays` rebuilds the nesting)."""
    state: dict[str, Any]
    """state.json: at least ``step``, plus whatever the trainer saved."""
    path: Path
    profile: Profile | None = None
    """The profile saved with the checkpoint (None when it has no profile.toml)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint folder as :func:`list_checkpoints` sees it (without loading it)."""

    path: Path
    step: int | None
    final: bool
    problem: str | None = None
    """Why the folder cannot be used (missing file, unreadable state.json), or None."""

    @property
    def ok(self) -> bool:
        return self.problem is None


def checkpoint_name(step: int) -> str:
    """``step-000200``."""
    return f"step-{step:06d}"


def checkpoint_dir(run_dir: str | os.PathLike[str], step: int, *, final: bool = False) -> Path:
    """Where :func:`save_checkpoint` puts the checkpoint of ``step`` (or ``final/``)."""
    run = Path(run_dir)
    return run / FINAL_DIR if final else run / CHECKPOINTS_DIR / checkpoint_name(step)


def profile_hash(profile: Profile) -> str:
    """sha256 of the profile's TOML (to tell whether a resume uses the same settings)."""
    from pipeline.profiles.io import dumps_profile

    return hashlib.sha256(dumps_profile(profile).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- pytrees


def _key_part(key: Any) -> str:
    text = str(key)
    if not text:
        raise TrainingError("an optimizer state key is empty; it cannot be saved")
    return text


def flatten_arrays(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """A pytree of dicts, lists and tuples of arrays (numpy, JAX or scalars) as
    ``{"mu/layers/0/q/a": ndarray}`` (keys joined with "/", list items by index; the
    trainer's flattening). An already flat dict of arrays stays as it is."""
    out: dict[str, np.ndarray] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{path}/{_key_part(k)}" if path else _key_part(k))
        elif isinstance(node, list | tuple):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}" if path else str(i))
        elif node is None:
            return
        else:
            if not path:
                raise TrainingError("the optimizer state must be a dict or a list of arrays")
            if path in out:
                raise TrainingError(f"the optimizer state has two entries named {path!r}")
            out[path] = np.asarray(node)

    walk(tree, prefix)
    return out


def unflatten_arrays(flat: Mapping[str, Any]) -> Any:
    """Nested dicts from flattened keys; a level whose keys are 0..n-1 becomes a list."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        node = root
        *parents, last = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def listify(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        items = {k: listify(v) for k, v in node.items()}
        if (
            items
            and all(k.isdigit() for k in items)
            and sorted(map(int, items)) == list(range(len(items)))
        ):
            return [items[str(i)] for i in range(len(items))]
        return items

    return listify(root)


def _npz_payload(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    payload: dict[str, np.ndarray] = {}
    raw_dtypes: dict[str, str] = {}
    for key, value in flat.items():
        arr = np.asarray(value)  # not ascontiguousarray: it turns a scalar into shape (1,)
        if arr.dtype.kind == "O":
            raise TrainingError(f"optimizer state {key!r} is not a numeric array")
        if arr.dtype.kind == "V":
            # e.g. ml_dtypes.bfloat16: np.save would write it as raw void; keep its bits
            raw_dtypes[key] = arr.dtype.name
            arr = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
        payload[key] = arr
    if raw_dtypes:
        text = json.dumps(raw_dtypes).encode("utf-8")
        payload[_DTYPES_KEY] = np.frombuffer(text, dtype=np.uint8)
    return payload


def _read_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        data = {name: npz[name] for name in npz.files}
    raw = data.pop(_DTYPES_KEY, None)
    if raw is not None:
        import ml_dtypes  # noqa: F401 - registers bfloat16 & co. with numpy

        for key, name in json.loads(bytes(raw).decode("utf-8")).items():
            data[key] = data[key].view(np.dtype(name))
    return data


# --------------------------------------------------------------------------- writing


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF):  # a folder on some filesystems
            raise
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for item in folder.iterdir():
        if item.is_file():
            _fsync(item)
    _fsync(folder)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where that is not available."""
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    c_int, c_path = ctypes.c_int, ctypes.c_char_p
    renameat2.argtypes = [c_int, c_path, c_int, c_path, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))


def _install(temp: Path, target: Path) -> None:
    """Rename the finished ``temp`` folder to ``target``, replacing an existing one."""
    if not target.exists():
        try:
            os.rename(temp, target)
            return
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if _exchange(temp, target):
        shutil.rmtree(temp, ignore_errors=True)  # now holds the old folder
        return
    old = target.with_name(f".old-{target.name}-{secrets.token_hex(4)}")
    os.rename(target, old)
    try:
        os.rename(temp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _adapter_bytes(adapter: Any) -> int:
    total = 0
    for block in adapter.get("layers", ()) if isinstance(adapter, Mapping) else ():
        for ab in block.values():
            for value in ab.values():
                total += int(getattr(value, "nbytes", 0))
    return total


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _space_errno(exc: BaseException) -> int | None:
    """ENOSPC, EDQUOT or EFBIG found in ``exc`` or its causes, else None."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return node.errno
        node = node.__cause__ or node.__context__
    return None


def _os_error(exc: BaseException) -> OSError | None:
    node: BaseException | None = exc
    while node is not None:
        if isinstance(node, OSError):
            return node
        node = node.__cause__ or node.__context__
    return None


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    adapter: Adapter,
    meta: AdapterMeta,
    opt_state: Any,
    state: Mapping[str, Any],
    profile: Profile | None,
    final: bool = False,
    base_model_name: str | None = None,
) -> Path:
    """Write a checkpoint of ``step`` atomically and return its folder:
    ``<run>/checkpoints/step-000200/``, or ``<run>/final/`` with ``final=True`` (which
    replaces an existing ``final/`` atomically).

    ``opt_state``: a pytree (dicts, lists, tuples) of arrays, or an already flattened
    ``{"mu/layers/0/q/a": array}``; stored flattened in ``optimizer.npz``. ``state``:
    JSON-able (numpy scalars and arrays are converted); ``step``, ``format``, ``saved`` and
    ``profile_hash`` are added. ``base_model_name`` goes into the PEFT config
    (default: the profile's model source).

    Raises:
        TrainingError: the checkpoint could not be written (full disk, file-size limit,
            permissions); the temporary folder is removed and earlier checkpoints are kept.
    """
    from pipeline.models.lora import save_npz, save_peft

    target = checkpoint_dir(run_dir, step, final=final)
    parent = target.parent
    flat_opt = flatten_arrays(opt_state)
    payload = _npz_payload(flat_opt)
    record: dict[str, Any] = {
        **dict(state),
        "step": int(step),
        "final": final,
        "format": FORMAT,
        "version": VERSION,
        "saved": now_iso(),
    }
    if profile is not None:
        record.setdefault("profile_hash", profile_hash(profile))
    try:
        state_text = json.dumps(record, indent=2, default=_json_default) + "\n"
    except (TypeError, ValueError) as error:
        raise TrainingError(f"checkpoint state of step {step} is not JSON-able: {error}") from None
    profile_text = None
    if profile is not None:
        from pipeline.profiles.io import dumps_profile

        profile_text = dumps_profile(profile)
    if base_model_name is None and profile is not None:
        base_model_name = profile.model.source
    needed = 2 * _adapter_bytes(adapter) + sum(a.nbytes for a in payload.values()) + 64 * 1024

    temp = parent / f".tmp-{target.name}-{secrets.token_hex(4)}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        temp.mkdir()
        save_npz(temp / ADAPTER_NPZ, adapter, meta)
        save_peft(temp, adapter, meta, base_model_name)
        with (temp / OPTIMIZER_NPZ).open("wb") as handle:
            np.savez(handle, allow_pickle=False, **payload)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        if profile_text is not None:
            _write_file(temp / PROFILE_TOML, profile_text.encode("utf-8"))
        _write_file(temp / STATE_JSON, state_text.encode("utf-8"))
        _fsync_tree(temp)
        _install(temp, target)
        _fsync(parent)
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise _write_error(exc, step, target, needed, final) from exc
    return target


def _write_error(
    exc: BaseException, step: int, target: Path, needed: int, final: bool
) -> BaseException:
    what = "the final checkpoint" if final else f"the checkpoint of step {step}"
    run_dir = target.parent if final else target.parent.parent
    kept = [c for c in list_checkpoints(run_dir) if c.ok]
    if kept:
        latest = max(kept, key=lambda c: (c.step or 0, c.final))
        kept_text = f" Earlier checkpoints are kept (latest: {latest.path})."
    else:
        kept_text = " No earlier checkpoint exists."
    code = _space_errno(exc)
    free = _free_bytes(target.parent if target.parent.exists() else run_dir)
    free_text = f"{_human(free)} free" if free is not None else "free space unknown"
    hint = (
        "Free space on that disk (or point GEMMA_TUI_WORKSPACE at a larger one), then "
        "continue with `gemma-tui train --resume RUN`."
    )
    if code in (errno.ENOSPC, errno.EDQUOT):
        full = "The disk is full" if code == errno.ENOSPC else "The disk quota is exceeded"
        return TrainingError(
            f"{full}: cannot write {what} to {target}. It needs about {_human(needed)}, "
            f"{free_text} on {target.parent}.{kept_text}",
            hint=hint,
        )
    if code == errno.EFBIG:
        return TrainingError(
            f"A file is too large for this system's file-size limit (ulimit -f): cannot write "
            f"{what} to {target} (about {_human(needed)} in all, {free_text}).{kept_text}",
            hint="Raise the limit (ulimit -f unlimited) or write the run to another "
            "filesystem, then resume with `gemma-tui train --resume RUN`.",
        )
    if isinstance(exc, PipelineError):
        return exc
    os_error = _os_error(exc)
    if os_error is not None:
        return TrainingError(
            f"Cannot write {what} to {target}: {os_error.strerror or os_error}.{kept_text}",
            hint="Check that the run folder is writable.",
        )
    return exc


# --------------------------------------------------------------------------- reading


def _checkpoint_dirs(run_dir: Path) -> Iterator[tuple[Path, bool]]:
    folder = run_dir / CHECKPOINTS_DIR
    if folder.is_dir():
        for item in sorted(folder.iterdir()):
            if item.is_dir() and _STEP_DIR.match(item.name):
                yield item, False
    final = run_dir / FINAL_DIR
    if final.is_dir():
        yield final, True


def inspect_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """What a checkpoint folder holds, checked cheaply: every file present and non-empty,
    state.json readable, the npz files readable zip archives."""
    folder = Path(path)
    final = folder.name == FINAL_DIR
    match = _STEP_DIR.match(folder.name)
    step = int(match[1]) if match else None
    missing = [n for n in REQUIRED_FILES if not (folder / n).is_file()]
    if missing:
        return CheckpointInfo(folder, step, final, f"missing {', '.join(missing)}")
    empty = [n for n in REQUIRED_FILES if (folder / n).stat().st_size == 0]
    if empty:
        return CheckpointInfo(folder, step, final, f"empty {', '.join(empty)}")
    try:
        state = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
        saved_step = int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return CheckpointInfo(folder, step, final, f"unreadable {STATE_JSON} ({error})")
    if step is not None and saved_step != step:
        return CheckpointInfo(
            folder, step, final, f"{STATE_JSON} says step {saved_step}, the folder {step}"
        )
    for name in (ADAPTER_NPZ, OPTIMIZER_NPZ):
        if not zipfile.is_zipfile(folder / name):
            return CheckpointInfo(folder, saved_step, final, f"{name} is not an npz archive")
    return CheckpointInfo(folder, saved_step, final)


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """The run's checkpoints, ``step-*`` by step then ``final/``, damaged ones included
    (``problem`` set); temporary ``.tmp-*`` folders are left out."""
    found = [inspect_checkpoint(p) for p, _ in _checkpoint_dirs(Path(run_dir))]
    return sorted(found, key=lambda c: (c.final, c.step if c.step is not None else -1))


def latest_checkpoint(
    run_dir: str | os.PathLike[str], *, on_event: EventSink = ignore_event
) -> Path | None:
    """The usable checkpoint with the highest step (``final/`` on a tie), or None. Damaged
    ones are skipped with a warning (a :class:`LogLine` and the log); ``.tmp-*`` leftovers of
    an interrupted write are ignored."""
    best: CheckpointInfo | None = None
    for info in list_checkpoints(run_dir):
        if not info.ok:
            message = f"Skipping damaged checkpoint {info.path}: {info.problem}."
            log.warning(message)
            on_event(LogLine(message, "warning"))
            continue
        if best is None or ((info.step or 0), info.final) >= ((best.step or 0), best.final):
            best = info
    return best.path if best is not None else None


def load_checkpoint(
    path: str | os.PathLike[str], *, expect: AdapterMeta | None = None
) -> Checkpoint:
    """Read a checkpoint folder (``.../step-000200`` or ``.../final``). With ``expect`` the
    adapter must match it (rank, alpha, targets, architecture).

    Raises:
        TrainingError: a file is missing or damaged (the message names it and the run's
            other checkpoints).
        ModelSourceError: the adapter does not match ``expect``.
    """
    from pipeline.errors import ModelSourceError
    from pipeline.models.lora import load_npz

    folder = Path(path)
    info = inspect_checkpoint(folder)
    if not info.ok:
        raise _damaged(folder, str(info.problem))
    state = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    try:
        adapter, meta = load_npz(folder / ADAPTER_NPZ, expect=expect)
    except ModelSourceError as error:
        if expect is not None and "does not fit" in error.message:
            raise
        raise _damaged(folder, error.message) from error
    try:
        opt_state = _read_npz_arrays(folder / OPTIMIZER_NPZ)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise _damaged(folder, f"cannot read {OPTIMIZER_NPZ} ({error})") from error
    profile = None
    if (folder / PROFILE_TOML).is_file():
        from pipeline.profiles.io import loads_profile

        try:
            text = (folder / PROFILE_TOML).read_text(encoding="utf-8")
            profile = loads_profile(text, source=str(folder / PROFILE_TOML))
        except (OSError, PipelineError) as error:
            raise _damaged(folder, f"cannot read {PROFILE_TOML} ({error})") from error
    return Checkpoint(
        step=int(state["step"]),
        adapter=adapter,
        meta=meta,
        opt_state=opt_state,
        state=state,
        path=folder,
        profile=profile,
    )


def _damaged(folder: Path, problem: str) -> TrainingError:
    run_dir = folder.parent if folder.name == FINAL_DIR else folder.parent.parent
    others = [c.path.name for c in list_checkpoints(run_dir) if c.ok and c.path != folder]
    hint = (
        f"Resume from another checkpoint of the run: {', '.join(others)}."
        if others
        else "The run has no other usable checkpoint; start it again."
    )
    return TrainingError(f"Checkpoint {folder} is damaged: {problem}.", hint=hint)
