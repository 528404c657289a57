"""Errors a user can act on.

Every error the pipeline raises on purpose is a :class:`PipelineError`: a message that says
what went wrong and where (file, line, field), and a hint that says what to do. The TUI shows
``title`` + message + hint; the CLI prints them to stderr and exits 2 (or 1 for invalid data).
Library exceptions are translated into these at the boundary, never printed.
"""

from __future__ import annotations


class PipelineError(Exception):
    """An error the user can act on."""

    title = "Pipeline error"
    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nHint: {self.hint}"
        return self.message


class DatasetError(PipelineError):
    """A dataset cannot be read at all (missing file, unknown format, unreadable encoding)."""

    title = "Dataset problem"


class InvalidDataError(DatasetError):
    """The dataset was read, but some rows are invalid (exit code 1 in the CLI)."""

    title = "Invalid rows"
    exit_code = 1


class ProfileError(PipelineError):
    """A profile TOML is malformed or has bad values; the message lists every problem."""

    title = "Profile problem"


class ModelSourceError(PipelineError):
    """Weights or a tokenizer cannot be found or read."""

    title = "Model source problem"


class OutOfMemoryError(PipelineError):
    """The accelerator ran out of memory; the hint names the profile values to change."""

    title = "Out of GPU memory"


class TrainingError(PipelineError):
    """A run cannot start or continue: non-finite loss, a bad resume point, a failed
    checkpoint write. The message says which step, and what was kept."""

    title = "Training failed"


class ExportError(PipelineError):
    """Merge, conversion, bundling or verification failed."""

    title = "Export failed"


class JobCancelled(PipelineError):
    """A long job stopped because its caller asked it to (``should_stop`` returned True)."""

    title = "Cancelled"


class ChatError(PipelineError):
    """A chat message cannot be answered: a model that cannot be opened, a message longer
    than the context, a runtime that failed. The session it came from stays usable."""

    title = "Chat"
