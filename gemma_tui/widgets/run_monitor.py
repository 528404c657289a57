"""What a training run is doing: status line, devices line, progress bar, loss and memory
plots, log.

Fed either by events from a run in this process (:meth:`RunMonitor.add_events`, batched by
the bridge) or by the run's own files when it is written by another process
(:meth:`RunMonitor.follow`: ``metrics.jsonl`` and ``log.txt`` through
:class:`~gemma_tui.screens.runs_files.RunFiles`, and ``run.json`` for the status, polled
twice a second, read-only). Every point lands in one
:class:`~gemma_tui.widgets.run_plots.RunHistory`; the plots redraw a few times a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Label, Log, ProgressBar

from gemma_tui.cli_train import format_duration
from gemma_tui.widgets.run_plots import LossPlot, MemoryPlot, RunHistory, device_readings

if TYPE_CHECKING:
    from textual.app import ComposeResult
    from textual.timer import Timer

    from gemma_tui.screens.runs_files import RunFiles
    from pipeline.events import Event

GiB = 1024**3
POLL_SECONDS = 0.5
STATUS_EVERY_POLLS = 4
"""run.json (and whether its process lives) is read every 4th poll: every 2 s."""


def status_line(
    last: Mapping[str, Any] | None,
    best_eval: float | None,
    *,
    running: bool = True,
    total_steps: int | None = None,
) -> str:
    """``step 12/100 · loss 2.3141 · best eval 2.41 · lr 1.2e-04 · 5,321 tok/s · ETA 3 min``."""
    if last is None:
        return "no steps yet"
    total = last.get("total_steps") or total_steps  # a metrics.jsonl row has no total
    parts = [f"step {last.get('step', 0)}/{total or '?'}"]
    loss = last.get("loss")
    if isinstance(loss, int | float):
        parts.append(f"loss {loss:.4f}")
    if best_eval is not None:
        parts.append(f"best eval {best_eval:.4f}")
    lr = last.get("learning_rate")
    if isinstance(lr, int | float):
        parts.append(f"lr {lr:.2e}")
    speed = last.get("tokens_per_s")
    if isinstance(speed, int | float):
        parts.append(f"{speed:,.0f} tok/s")
    if running:
        eta = last.get("eta_s")
        step_s, step = last.get("step_s"), last.get("step")
        if eta is None and total and isinstance(step_s, int | float) and isinstance(step, int):
            eta = step_s * max(0, int(total) - step)  # a followed run: from the last step
        parts.append(f"ETA {format_duration(eta)}")
    elapsed = last.get("elapsed_s")
    if isinstance(elapsed, int | float):
        parts.append(f"elapsed {format_duration(elapsed)}")
    return " · ".join(parts)


def _gib(value: int) -> str:
    return f"{value / GiB:.1f}"


def device_text(reading: Mapping[str, Any]) -> str:
    """``gpu:0 3.1 GiB (peak 4.0) of 79.2``: one device's JAX use, its peak and the card (or
    JAX's pool without a card size); ``gpu:0 card 20.3 of 79.2 GiB`` with NVML alone; the
    bare name without readings."""
    name = reading["device"]
    in_use, peak = reading.get("bytes_in_use"), reading.get("peak_bytes")
    total = reading.get("gpu_total_bytes") or reading.get("bytes_limit")
    if in_use is not None:
        text = f"{name} {_gib(in_use)} GiB"
        if peak is not None:
            text += f" (peak {_gib(peak)})"
        return text + (f" of {_gib(total)}" if total else "")
    used = reading.get("gpu_used_bytes")
    if used is not None and total:
        return f"{name} card {_gib(used)} of {_gib(total)} GiB"
    return name


def devices_line(last: Mapping[str, Any] | None) -> str:
    """Every device of the newest train record, e.g. ``gpu:0 3.1 GiB (peak 4.0) of 79.2 ·
    gpu:1 3.0 GiB (peak 3.9) of 79.2``; devices without readings (a CPU) are named, with the
    host RSS. Empty when the record lists no device (no step yet, or an older run)."""
    if last is None:
        return ""
    readings = device_readings(last.get("devices"))
    if not readings:
        return ""
    line = " · ".join(device_text(reading) for reading in readings)
    reported = any(r[f] is not None for r in readings for f in ("bytes_in_use", "gpu_used_bytes"))
    rss = last.get("host_rss_bytes")
    if not reported and isinstance(rss, int | float) and not isinstance(rss, bool):
        line += f" · host RSS {_gib(int(rss))} GiB"
    return line


class RunMonitor(Vertical):
    """See the module docstring. ``state`` is a word shown in the title line."""

    DEFAULT_CSS = """
    RunMonitor { height: 1fr; }
    RunMonitor #monitor-title { width: 1fr; text-style: bold; color: $text-accent; }
    RunMonitor #monitor-status { width: 1fr; height: auto; max-height: 2; }
    RunMonitor #monitor-devices { width: 1fr; height: auto; max-height: 2; color: $text-muted; }
    RunMonitor #monitor-progress { width: 1fr; height: 1; }
    RunMonitor #monitor-progress Bar { width: 1fr; }
    RunMonitor #monitor-plots { height: 1fr; min-height: 8; }
    RunMonitor LossPlot, RunMonitor MemoryPlot { width: 1fr; height: 1fr; }
    RunMonitor #monitor-log {
        height: 7; border-top: solid $panel-lighten-2; background: $surface;
    }
    """

    class Ended(Message):
        """A followed run's status left "running" (seen in its run.json)."""

        def __init__(self, run_dir: Path, status: str) -> None:
            super().__init__()
            self.run_dir = run_dir
            self.status = status

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history = RunHistory()
        self.run_dir: Path | None = None
        self.total_steps: int | None = None
        self.state = ""
        self.followed: Path | None = None
        self._files: RunFiles | None = None
        self._polls = 0
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Label("No run yet", id="monitor-title")
        yield Label("no steps yet", id="monitor-status")
        devices = Label("", id="monitor-devices", markup=False)
        devices.display = False  # shown once a train record lists its devices
        yield devices
        yield ProgressBar(total=1, show_eta=False, id="monitor-progress")
        with Horizontal(id="monitor-plots"):
            yield LossPlot()
            yield MemoryPlot()
        yield Log(max_lines=500, id="monitor-log")

    def on_mount(self) -> None:
        self._draw_plots()

    # ---- what the user sees

    def reset(self, label: str, state: str = "") -> None:
        """Start over for a new run (its name as the plots' label)."""
        self.unfollow()
        self.history = RunHistory(label)
        self.run_dir = None
        self.total_steps = None
        self.state = state
        self.query_one(Log).clear()
        bar = self.query_one(ProgressBar)
        bar.update(total=None if state in ("starting", "launching") else 1, progress=0)
        self._show_status()
        self._draw_plots()

    def set_state(self, state: str) -> None:
        self.state = state
        self._show_status()

    def write_log(self, line: str) -> None:
        self.query_one(Log).write_line(line)

    def _show_title(self) -> None:
        name = self.run_dir.name if self.run_dir else (self.history.label or "run")
        text = f"{name}: {self.state}" if self.state else name
        self.query_one("#monitor-title", Label).update(text)

    def _show_status(self) -> None:
        last = self.history.last_train
        ended = self.state in ("finished", "failed") or self.state.startswith("stopped")
        self.query_one("#monitor-status", Label).update(
            status_line(
                last, self.history.best_eval, running=not ended, total_steps=self.total_steps
            )
        )
        devices = devices_line(last)
        label = self.query_one("#monitor-devices", Label)
        label.update(devices)
        label.display = bool(devices)
        bar = self.query_one(ProgressBar)
        total = (last or {}).get("total_steps") or self.total_steps
        if total:
            bar.update(total=total, progress=(last or {}).get("step", 0))
        self._show_title()

    def _draw_plots(self) -> None:
        self.query_one(LossPlot).show([self.history])
        self.query_one(MemoryPlot).show(self.history)

    # ---- events from a run in this process

    def add_events(self, events: Iterable[Event]) -> None:
        """Take a batch of a run's events (in order); redraws once for the batch."""
        from pipeline.events import (
            CheckpointSaved,
            EvalMetrics,
            LogLine,
            RunFinished,
            RunStarted,
            StepMetrics,
        )

        changed = False
        for event in events:
            if isinstance(event, StepMetrics | EvalMetrics):
                self.history.add_event(event)
                changed = True
                if isinstance(event, EvalMetrics):
                    self.write_log(f"eval at step {event.step}: loss {event.loss:.4f}")
            elif isinstance(event, RunStarted):
                self.run_started(Path(event.run_dir), event.total_steps, event.start_step)
                self.write_log(
                    f"run {Path(event.run_dir).name}: {event.model}; {event.train_examples:,} "
                    f"train / {event.eval_examples:,} eval examples; {event.total_steps:,} steps"
                    + (f", from step {event.start_step}" if event.start_step else "")
                )
                if event.placement:
                    self.write_log(f"devices: {event.placement}")
            elif isinstance(event, CheckpointSaved):
                self.write_log(f"checkpoint at step {event.step} ({event.seconds:.1f} s)")
            elif isinstance(event, LogLine):
                prefix = "" if event.level == "info" else f"{event.level.upper()}: "
                self.write_log(prefix + event.message)
            elif isinstance(event, RunFinished):
                self.set_state(event.status)  # the trainer logged the why
        if changed:
            self._show_status()
            self._draw_plots()

    def run_started(self, run_dir: Path, total_steps: int, start_step: int = 0) -> None:
        self.run_dir = run_dir
        self.total_steps = total_steps
        if start_step and not self.history.train_steps:
            # resumed in this process: show the steps before the checkpoint too
            from pipeline.training.runs import read_metrics

            self.history.extend(read_metrics(run_dir / "metrics.jsonl"))
        self.query_one(ProgressBar).update(total=total_steps, progress=start_step)
        self._show_status()
        self._draw_plots()

    # ---- following a run written by another process

    def follow(self, run_dir: Path, state: str = "running") -> None:
        """Show ``run_dir`` and follow its files until :meth:`unfollow` (or it ends)."""
        from gemma_tui.screens.runs_files import RunFiles

        self.reset(run_dir.name, state)
        self.run_dir = run_dir
        self.followed = run_dir
        self._files = RunFiles(run_dir)
        self._files.use(self.history)
        self._polls = 0
        self.poll()
        self._timer = self.set_interval(POLL_SECONDS, self.poll)

    def unfollow(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self.followed = None
        self._files = None

    def poll(self) -> None:
        """Read what the followed run wrote since the last poll."""
        run_dir, files = self.followed, self._files
        if run_dir is None or files is None:
            return
        self._take(files)
        if self._polls % STATUS_EVERY_POLLS == 0:
            self._read_status(run_dir)
        self._polls += 1

    def _take(self, files: RunFiles) -> None:
        evals = len(self.history.eval_steps)
        if files.poll_metrics():
            for step, loss in zip(
                self.history.eval_steps[evals:], self.history.eval_loss[evals:], strict=True
            ):
                self.write_log(f"eval at step {step}: loss {loss:.4f}")
            self._show_status()
            self._draw_plots()
        for line in files.poll_log():
            self.write_log(line)

    def _read_status(self, run_dir: Path) -> None:
        from pipeline.training.runs import summarize_run

        summary = summarize_run(run_dir)
        if summary.total_steps and not self.total_steps:
            self.total_steps = summary.total_steps
            self._show_status()
        if summary.status != "running" and summary.status != "unknown":
            if self._files is not None:  # written between this poll's read and the end
                self._take(self._files)
            self.set_state(summary.status)
            self.unfollow()
            self.post_message(self.Ended(run_dir, summary.status))
