"""Events that long jobs emit.

Every long job has one shape: ``job(..., *, on_event, should_stop) -> result``. The job calls
``on_event(event)`` with the frozen dataclasses below and polls ``should_stop()`` often (at
least every few thousand rows, or every step); when it returns True the job stops cleanly,
keeps what it has written consistent, and raises :class:`pipeline.errors.JobCancelled`.

The CLI passes a printer, the TUI a bridge that batches events into Textual messages, and
tests a ``list.append``. Nothing here imports anything heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Progress:
    """A long job advanced. ``total`` is None when unknown (e.g. a stream of unknown length)."""

    stage: str
    """Short label of what is being done, e.g. "validate", "tokenize", "dedup"."""
    done: int
    total: int | None
    unit: str = "rows"
    """What ``done`` and ``total`` count: "rows", "bytes", "files", "tokens"."""


@dataclass(frozen=True, slots=True)
class LogLine:
    """A line worth showing to the user in a log pane."""

    message: str
    level: str = "info"
    """"info", "warning" or "error"."""


@dataclass(frozen=True, slots=True)
class StageStarted:
    """A named stage of a job began (long stages: the UI shows it with its elapsed time)."""

    stage: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StageDone:
    """A named stage of a job has finished; ``summary`` is one human-readable line."""

    stage: str
    summary: str
    seconds: float


@dataclass(frozen=True, slots=True)
class RunStarted:
    """A training run began (or resumed) in ``run_dir``."""

    run_dir: str
    total_steps: int
    start_step: int
    model: str
    """One line describing the base model, e.g. "Gemma 3 270M (embedded, pretrained)"."""
    train_examples: int
    eval_examples: int
    tokens_per_step: int
    """batch_size x gradient_accumulation_steps x sequence_length."""
    devices: tuple[str, ...] = ()
    """The devices the run trains on, in mesh order (e.g. ("gpu:0", "gpu:1"); every
    process's devices on several hosts)."""
    placement: str = ""
    """How the work is split, in words, e.g. "data parallel over 2 GPUs (4 sequences per
    device per micro-batch)"."""


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """One accelerator's memory after a step (``devices`` entries of a metrics line)."""

    device: str
    """e.g. "gpu:0", "cpu:1"."""
    bytes_in_use: int | None = None
    """JAX memory in use by this process on this device (None where not reported)."""
    peak_bytes: int | None = None
    bytes_limit: int | None = None
    """JAX's pool on this device."""
    gpu_used_bytes: int | None = None
    """NVML: used on this card by all processes (None without a GPU)."""
    gpu_total_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class StepMetrics:
    """One optimizer step finished. Also written as a ``{"type": "train"}`` metrics line."""

    step: int
    total_steps: int
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_s: float
    """Tokens (padding excluded) per second over this step."""
    trained_tokens: int
    """Tokens that carried loss in this step."""
    elapsed_s: float
    eta_s: float | None
    bytes_in_use: int | None = None
    """JAX device memory in use by this process (None on a CPU that does not report it)."""
    peak_bytes: int | None = None
    gpu_used_bytes: int | None = None
    """NVML: memory used on the card by all processes (None without a GPU)."""
    gpu_total_bytes: int | None = None
    host_rss_bytes: int | None = None
    devices: tuple[DeviceMemory, ...] = ()
    """Every device of this process, in mesh order (the fields above are the first one's)."""


@dataclass(frozen=True, slots=True)
class EvalMetrics:
    """An eval pass over the held-out split finished."""

    step: int
    loss: float
    tokens: int
    seconds: float


@dataclass(frozen=True, slots=True)
class CheckpointSaved:
    step: int
    path: str
    seconds: float


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run ended: ``status`` is "finished", "stopped" or "failed"."""

    status: str
    step: int
    run_dir: str
    message: str = ""
    final_loss: float | None = None
    best_eval_loss: float | None = None


Event = (
    Progress
    | LogLine
    | StageStarted
    | StageDone
    | RunStarted
    | StepMetrics
    | EvalMetrics
    | CheckpointSaved
    | RunFinished
)
EventSink = Callable[[Event], None]
StopCheck = Callable[[], bool]


def ignore_event(event: Event) -> None:
    """The default sink: drop the event."""


def never_stop() -> bool:
    """The default stop check: never ask to stop."""
    return False
