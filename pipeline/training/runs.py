"""The run directory and its record: ``run.json``, ``metrics.jsonl``, the run lock, listing.

A run lives in ``<workspace>/runs/<profile>-<YYYYmmdd-HHMMSS>[-n]/`` (see
docs/training-api.md for the files in it). ``run.json`` is the run's state, rewritten
atomically on every change; ``metrics.jsonl`` is its history, one JSON object per line,
appended and flushed line by line, so that another process (the TUI attaching to a run
started by the CLI) can follow it. ``run.lock`` holds an exclusive ``flock`` while a process
writes the run, so two processes never write the same run. ``stop.request`` asks the process
that writes a run to stop (after the current step, with a checkpoint): any process may write
it (``gemma-tui stop``, the TUI), the trainer looks for it and removes it when its run ends.

Nothing heavy is imported here.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import math
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import TrainingError
from pipeline.events import EvalMetrics, StepMetrics
from pipeline.utils import fileio
from pipeline.workspace import Workspace

RUN_JSON = "run.json"
METRICS_JSONL = "metrics.jsonl"
LOCK_FILE = "run.lock"
PROFILE_TOML = "profile.toml"
LOG_TXT = "log.txt"
STOP_FILE = "stop.request"
CONSOLE_TXT = "console.txt"
"""A detached run's stdout and stderr (gemma_tui.detach), appended."""

RunStatus = Literal["running", "finished", "stopped", "failed"]
GONE = "stopped (process gone)"
"""Listed status of a run whose run.json says "running" but whose process has ended."""


def now_iso() -> str:
    """The local time with its UTC offset, to the second (the format of run.json)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.astimezone()


# --------------------------------------------------------------------------- run folder


def _runs_dir(workspace: Workspace | str | os.PathLike[str] | None) -> Path:
    if workspace is None:
        return Workspace.default().runs_dir
    if isinstance(workspace, Workspace):
        return workspace.runs_dir
    return Workspace(Path(workspace)).runs_dir


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return slug[:64] or "run"


def new_run_dir(workspace: Workspace | str | os.PathLike[str] | None, profile_name: str) -> Path:
    """Create and return a new, empty run folder ``runs/<profile>-<YYYYmmdd-HHMMSS>[-n]/``.

    ``mkdir`` fails if the folder exists, so two runs started in the same second (or by two
    processes) get different folders (``-2``, ``-3``, ...).

    Raises:
        TrainingError: the runs folder cannot be created or written.
    """
    runs = _runs_dir(workspace)
    stem = f"{_slug(profile_name)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    try:
        runs.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            path = runs / (stem if n == 1 else f"{stem}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
    except OSError as error:
        raise TrainingError(
            f"Cannot create a run folder in {runs}: {error.strerror or error}.",
            hint="Check that the workspace is writable (or set GEMMA_TUI_WORKSPACE).",
        ) from error
    raise TrainingError(f"{runs}: 10,000 runs named {stem}-n exist already.")


def resolve_run(run: str | os.PathLike[str], workspace: Workspace | None = None) -> Path:
    """A run folder from a path, or from a run's name in the workspace's runs folder.

    Raises:
        TrainingError: no such run (the message lists the newest runs).
    """
    path = Path(run).expanduser()
    if (path / RUN_JSON).is_file() or (path.is_dir() and (path / "checkpoints").is_dir()):
        return path
    named = _runs_dir(workspace) / os.fspath(run)
    if named.is_dir():
        return named
    names = [r.name for r in list_runs(workspace)[:5]]
    raise TrainingError(
        f"No run {os.fspath(run)!r}: neither a run folder nor a run in {_runs_dir(workspace)}.",
        hint=(f"Recent runs: {', '.join(names)}." if names else "There are no runs yet.")
        + " `gemma-tui runs` lists them.",
    )


# --------------------------------------------------------------------------- run.json


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """The content of ``run.json``: what a run is and where it stands."""

    status: RunStatus = "running"
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started: str = field(default_factory=now_iso)
    """ISO 8601 local time with offset, e.g. "2026-11-22T14:03:11+01:00"."""
    updated: str = field(default_factory=now_iso)
    profile: str = ""
    model: str = ""
    """One line describing the base model."""
    data: str = ""
    """The training data file(s) as given."""
    total_steps: int = 0
    step: int = 0
    best_eval_loss: float | None = None
    error: str | None = None
    """Why the run failed or stopped early; None when it did not."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        loss = out["best_eval_loss"]
        if loss is not None and not math.isfinite(loss):
            out["best_eval_loss"] = None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """Read a record; unknown keys are ignored, missing ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def updated_now(self, **changes: Any) -> RunRecord:
        """A copy with ``changes`` applied and ``updated`` set to now."""
        return dataclasses.replace(self, **changes, updated=now_iso())


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, fsync, rename."""
    return fileio.write_text_atomic(path, text, sync_dir=True)


def write_run_record(run_dir: str | os.PathLike[str], record: RunRecord) -> Path:
    """Write ``run.json`` atomically. Raises TrainingError when it cannot be written."""
    path = Path(run_dir) / RUN_JSON
    try:
        return write_text_atomic(path, json.dumps(record.to_dict(), indent=2) + "\n")
    except OSError as error:
        raise TrainingError(
            f"Cannot write {path}: {error.strerror or error}.",
            hint="Check that the run folder is writable and the disk is not full.",
        ) from error


def read_run_record(run_dir: str | os.PathLike[str]) -> RunRecord:
    """Read ``run.json``. Raises TrainingError when it is missing or damaged."""
    path = Path(run_dir) / RUN_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return RunRecord.from_dict(data)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no such file; {path.parent} is not a run folder.") from None
    except (OSError, ValueError, TypeError) as error:
        raise TrainingError(f"{path}: cannot read the run record ({error}).") from error


# --------------------------------------------------------------------------- metrics.jsonl


def metrics_record(event: StepMetrics | EvalMetrics) -> dict[str, Any]:
    """The ``metrics.jsonl`` line of an event: ``{"type": "train"|"eval", "step", ...}``."""
    kind = "train" if isinstance(event, StepMetrics) else "eval"
    return {"type": kind, **dataclasses.asdict(event), "time": round(time.time(), 3)}


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl``, flushed after each line.

    A partial last line left by a crash is closed with a newline before appending, so it
    spoils only itself. Non-finite floats are written as ``NaN``/``Infinity`` (Python's
    json reads them back).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = self.path.open("a+b")
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() > 0:
            self._file.seek(-1, os.SEEK_END)
            if self._file.read(1) != b"\n":
                self._file.seek(0, os.SEEK_END)
                self._file.write(b"\n")
        self._file.seek(0, os.SEEK_END)

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(dict(record), ensure_ascii=False, separators=(",", ":")) + "\n"
        self._file.write(line.encode("utf-8"))
        self._file.flush()

    def write_event(self, event: StepMetrics | EvalMetrics) -> None:
        self.write(metrics_record(event))

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_lines(chunk: bytes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for raw in chunk.split(b"\n"):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            continue  # a line cut by a crash (closed later by MetricsWriter)
        if isinstance(value, dict):
            out.append(value)
    return out


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record in ``metrics.jsonl``, in order. A partial last line (a writer is in the
    middle of it, or crashed) and damaged lines are skipped; a missing file gives []."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return _parse_lines(data)


class MetricsTail:
    """Follows a growing ``metrics.jsonl``: :meth:`poll` returns the records of the complete
    lines written since the last poll (a partial last line waits for its newline)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0

    def poll(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return _parse_lines(data[: end + 1])


# --------------------------------------------------------------------------- the lock


class RunLock:
    """An exclusive ``flock`` on ``<run>/run.lock`` (which holds the owner's pid and host)
    for as long as a process writes the run. Use as a context manager.

    Raises (on enter):
        TrainingError: another process holds the lock (the message names its pid and host).
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_flock(fd, fcntl.LOCK_EX, attempts=5):
            os.close(fd)
            raise TrainingError(
                f"Run {self.path.parent} is in use by {_read_owner(self.path)}.",
                hint="Wait for that run to end, or stop it first (Ctrl+C in its terminal, or "
                f"`gemma-tui stop {self.path.parent.name}`); two processes never write the same "
                "run.",
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_flock(fd: int, kind: int, *, attempts: int = 1) -> bool:
    """``flock(fd, kind | LOCK_NB)``, retried a few times 50 ms apart (a listing's brief
    probe may be in the way); False when another holder keeps it."""
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if attempt + 1 < attempts:
                time.sleep(0.05)
    return False


def _read_owner(path: Path) -> str:
    try:
        pid, _, host = path.read_text(encoding="utf-8").strip().partition(" ")
    except OSError:
        return "another process"
    if not pid:
        return "another process"
    return f"process {pid}" + (f" on {host}" if host else "")


def is_locked(run_dir: str | os.PathLike[str]) -> bool:
    """Whether some process holds the run's lock right now (probes with a shared lock)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if not _try_flock(fd, fcntl.LOCK_SH):
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def lock_owner(run_dir: str | os.PathLike[str]) -> str:
    """Who holds (or last held) the run's lock, as "process 123 on host"."""
    return _read_owner(Path(run_dir) / LOCK_FILE)


# --------------------------------------------------------------------------- stop requests


def request_stop(run_dir: str | os.PathLike[str], *, reason: str = "") -> Path:
    """Ask the process that writes the run to stop after its current step (it saves a
    checkpoint and ends with status "stopped"). Writes ``<run>/stop.request`` atomically: who
    asked (pid, host, time, reason) and which process the run's ``run.json`` named then
    (``run_pid``, ``run_host``). Returns its path.

    The trainer checks for the file a few times a second, also while it loads the model and
    prepares the data, and removes it when the run ends. A request left behind (its run had
    ended, or crashed) is removed when the run is next started, unless it names the very
    process that starts it (a detached run asked to stop while it was still starting).

    Raises:
        TrainingError: the file cannot be written (no such run folder, read-only, ...).
    """
    folder = Path(run_dir)
    try:
        target = read_run_record(folder)
        run_pid: int | None = target.pid if target.status == "running" else None
        run_host: str | None = target.host if target.status == "running" else None
    except TrainingError:
        run_pid = run_host = None
    payload = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "time": now_iso(),
        "reason": reason,
        "run_pid": run_pid,
        "run_host": run_host,
    }
    path = folder / STOP_FILE
    try:
        return write_text_atomic(path, json.dumps(payload, ensure_ascii=False) + "\n")
    except OSError as error:
        raise TrainingError(
            f"Cannot write the stop request {path}: {error.strerror or error}.",
            hint="Check that the run folder exists and is writable.",
        ) from error


def stop_requested(run_dir: str | os.PathLike[str]) -> bool:
    """Whether the run has a stop request (one ``stat``)."""
    return os.path.exists(os.path.join(run_dir, STOP_FILE))


def read_stop_request(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The stop request's content (see :func:`request_stop`); None when there is none. A
    damaged file reads as ``{}`` (it still asks the run to stop)."""
    path = Path(run_dir) / STOP_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def clear_stop_request(run_dir: str | os.PathLike[str]) -> None:
    """Remove the run's stop request, if any."""
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)


def describe_stop_request(request: Mapping[str, Any] | None) -> str:
    """Who asked, for messages: "process 123 on host at 2026-...: reason"."""
    if not request:
        return "a stop request"
    who = f"process {request['pid']}" if request.get("pid") else "another process"
    if request.get("host"):
        who += f" on {request['host']}"
    if request.get("time"):
        who += f" at {request['time']}"
    reason = str(request.get("reason") or "").strip()
    return f"a stop request from {who}" + (f" ({reason})" if reason else "")


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """One line of the runs list."""

    name: str
    path: Path
    status: str
    """run.json's status; "stopped (process gone)" for a dead "running" run; "unknown"
    when run.json is missing or damaged."""
    step: int
    total_steps: int
    best_eval_loss: float | None
    started: datetime | None
    duration_s: float | None
    """From start to the last update (to now while running)."""
    age_s: float | None
    """Seconds since the run started."""
    profile: str = ""
    model: str = ""
    error: str | None = None
    pid: int = 0
    """The process run.json names (the one writing the run while it runs); 0 when unknown."""
    host: str = ""
    data: str = ""
    """The training data file(s) as given."""
    stop_requested: bool = False
    """A stop request is waiting for the run (see :func:`request_stop`)."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["path"] = str(self.path)
        out["started"] = self.started.isoformat() if self.started else None
        return out


def _process_alive(pid: int, updated: datetime | None) -> bool:
    """Whether ``pid`` is a live process that existed when the record was last updated (a
    newer process with a reused pid does not count)."""
    if pid <= 0:
        return False
    try:
        import psutil

        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return updated is None or process.create_time() <= updated.timestamp() + 2
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    except Exception:  # psutil.NoSuchProcess, AccessDenied
        return False


def summarize_run(run_dir: Path) -> RunSummary:
    """The :class:`RunSummary` of one run folder (never raises for a damaged run)."""
    now = datetime.now().astimezone()
    try:
        record = read_run_record(run_dir)
    except TrainingError as error:
        try:
            started = datetime.fromtimestamp(run_dir.stat().st_mtime).astimezone()
        except OSError:
            started = None
        return RunSummary(
            name=run_dir.name,
            path=run_dir,
            status="running" if is_locked(run_dir) else "unknown",
            step=0,
            total_steps=0,
            best_eval_loss=None,
            started=started,
            duration_s=None,
            age_s=(now - started).total_seconds() if started else None,
            error=error.message,
        )
    started, updated = _parse_time(record.started), _parse_time(record.updated)
    status: str = record.status
    if status == "running":
        if record.host == socket.gethostname():
            if not _process_alive(record.pid, updated) and not is_locked(run_dir):
                status = GONE
        elif not is_locked(run_dir):
            status = f"running (on {record.host})"
    end = now if status == "running" else updated
    return RunSummary(
        name=run_dir.name,
        path=run_dir,
        status=status,
        step=record.step,
        total_steps=record.total_steps,
        best_eval_loss=record.best_eval_loss,
        started=started,
        duration_s=(end - started).total_seconds() if started and end else None,
        age_s=(now - started).total_seconds() if started else None,
        profile=record.profile,
        model=record.model,
        error=record.error,
        pid=record.pid,
        host=record.host,
        data=record.data,
        stop_requested=stop_requested(run_dir),
    )


def list_runs(workspace: Workspace | str | os.PathLike[str] | None = None) -> list[RunSummary]:
    """Every run folder in the workspace's ``runs/``, newest first."""
    runs = _runs_dir(workspace)
    if not runs.is_dir():
        return []
    found = [summarize_run(p) for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    epoch = datetime.fromtimestamp(0).astimezone()
    return sorted(found, key=lambda r: (r.started or epoch, r.name), reverse=True)
