"""Reading a run folder while another process may be writing it: read-only, never locked.

:class:`RunFiles` follows ``metrics.jsonl`` (through
:class:`~pipeline.training.runs.MetricsTail`, into a
:class:`~gemma_tui.widgets.run_plots.RunHistory`) and the new lines of ``log.txt``. A resume
rewrites ``metrics.jsonl`` (it drops the rows after its checkpoint): a replaced or shorter file
is read again from its start, and the history keeps each step once. The checkpoint helpers
list ``checkpoints/step-*`` and ``final/`` with their step and size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_tui.widgets.run_plots import RunHistory
from pipeline.training.runs import LOG_TXT, METRICS_JSONL, PROFILE_TOML, MetricsTail

LOG_TAIL_BYTES = 64 * 1024
"""How much of an existing log.txt is shown at first (its end)."""


class RunFiles:
    """Follows one run folder's growing files, read-only: its metrics into :attr:`history`,
    and the new lines of its log."""

    def __init__(self, run_dir: Path, label: str | None = None) -> None:
        self.run_dir = run_dir
        self.history = RunHistory(run_dir.name if label is None else label)
        self._metrics = run_dir / METRICS_JSONL
        self._tail = MetricsTail(self._metrics)
        self._metrics_inode: int | None = None
        self._log = run_dir / LOG_TXT
        self._log_offset: int | None = None
        self._log_inode: int | None = None

    def read_history(self) -> RunHistory:
        """Every record so far, in a new history (for a thread: the screen's history is not
        touched); the screen then takes it with :meth:`use`."""
        history = RunHistory(self.history.label)
        self.poll_metrics(into=history)
        return history

    def use(self, history: RunHistory) -> None:
        self.history = history

    def poll_metrics(self, *, into: RunHistory | None = None) -> int:
        """Add the records written since the last poll to :attr:`history` (or ``into``);
        returns how many were added."""
        try:
            stat = self._metrics.stat()
        except OSError:
            return 0
        if self._metrics_inode is not None and (
            stat.st_ino != self._metrics_inode or stat.st_size < self._tail.offset
        ):
            # Rewritten by a resume: read it all again. The steps going back make the
            # history drop its later points (RunHistory keeps each step once).
            self._tail = MetricsTail(self._metrics)
        self._metrics_inode = stat.st_ino
        records = self._tail.poll()
        (self.history if into is None else into).extend(records)
        return len(records)

    def poll_log(self) -> list[str]:
        """The complete lines added to ``log.txt`` since the last poll (at first: the lines
        of its last :data:`LOG_TAIL_BYTES`)."""
        try:
            stat = self._log.stat()
            if self._log_offset is None or stat.st_ino != self._log_inode:
                self._log_offset = max(0, stat.st_size - LOG_TAIL_BYTES)
                skip_partial = self._log_offset > 0
            elif stat.st_size < self._log_offset:  # truncated: start over
                self._log_offset, skip_partial = 0, False
            else:
                skip_partial = False
            self._log_inode = stat.st_ino
            if stat.st_size == self._log_offset:
                return []
            with self._log.open("rb") as handle:
                handle.seek(self._log_offset)
                data = handle.read(4 * LOG_TAIL_BYTES)
        except OSError:
            return []
        if skip_partial:  # started inside a line: skip to the next one
            newline = data.find(b"\n")
            if newline < 0:
                self._log_offset += len(data)
                return []
            self._log_offset += newline + 1
            data = data[newline + 1 :]
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._log_offset += end + 1
        return data[:end].decode("utf-8", "replace").splitlines()


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    name: str
    step: int | None
    size_bytes: int
    problem: str | None


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def list_checkpoint_rows(run_dir: Path) -> list[CheckpointRow]:
    """The run's checkpoints (``checkpoints/step-*`` then ``final/``) with step and size."""
    from pipeline.training.checkpoint import list_checkpoints

    rows = []
    for info in list_checkpoints(run_dir):
        name = info.path.name if not info.final else "final"
        rows.append(CheckpointRow(name, info.step, folder_bytes(info.path), info.problem))
    return rows


def checkpoints_signature(run_dir: Path) -> tuple[Any, ...]:
    """Changes when a checkpoint folder appears, goes or is replaced (cheap: two listings)."""
    names: list[tuple[str, int]] = []
    for folder in (run_dir / "checkpoints", run_dir):
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir() and (folder != run_dir or entry.name == "final"):
                        names.append((entry.name, entry.inode()))
        except OSError:
            continue
    return tuple(sorted(names))


def format_bytes(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def read_profile_text(run_dir: Path) -> str:
    try:
        return (run_dir / PROFILE_TOML).read_text(encoding="utf-8")
    except OSError:
        return f"(no {PROFILE_TOML} in this run folder)"
