"""`gemma-tui train`, `gemma-tui runs` and `gemma-tui stop`: the training job headless, the
runs list, and stopping a run from another terminal.

``train`` prints the memory estimate, then runs :func:`pipeline.training.trainer.train`
with a printer of its events (a rich progress bar on a terminal, a plain line every few
seconds otherwise) and a stop flag: the first Ctrl+C asks the run to stop after the current
step and save a checkpoint, a second one aborts at once. ``train --detach`` starts the same
command in the background instead (:func:`gemma_tui.detach.launch_detached`) and returns.
``stop RUN`` writes a stop request for a running run (the run saves a checkpoint after its
current step and ends "stopped").

Exit codes: 0 finished (or started, with --detach); 1 the run failed (non-finite loss, out of
memory, a failed checkpoint write), or ``stop`` found no running run; 2 usage or environment
errors found before the run started (bad arguments, a missing data file, a bad profile);
130 stopped by Ctrl+C.

Nothing heavy is imported at module level (jax and keras load inside the trainer).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from pipeline.events import Event, RunFinished, RunStarted, StepMetrics
    from pipeline.profiles.schema import Profile

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 130

GiB = 1024**3


class TrainUsageError(Exception):
    """A bad combination of arguments (exit code 2)."""


# --------------------------------------------------------------------------- formatting


def format_duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 04 min``, ``3 d 4 h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def format_age(seconds: float | None) -> str:
    """``just now``, ``12 min ago``, ``3 h ago``, ``2 d ago``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit} ago"
    return "-"


def format_devices(event: StepMetrics) -> str:
    """Each device's use/peak of a step on several devices, ``gpu:0 3.1/4.0 GiB, gpu:1
    3.0/3.9 GiB`` (``gpu:0 3.1 GiB`` without a peak; a device without readings is left out);
    empty on one device, or when none reported its use."""
    if len(event.devices) < 2:
        return ""
    parts = []
    for device in event.devices:
        if device.bytes_in_use is None:
            continue
        text = f"{device.bytes_in_use / GiB:.1f}"
        if device.peak_bytes is not None:
            text += f"/{device.peak_bytes / GiB:.1f}"
        parts.append(f"{device.device} {text} GiB")
    return ", ".join(parts)


def format_memory(event: StepMetrics) -> str:
    """What a step's memory readings say, shortest first: device use and peak, the card,
    or the host RSS on a CPU. On several devices: each one's use and peak
    (:func:`format_devices`)."""
    devices = format_devices(event)
    if devices:
        return devices
    parts = []
    if event.bytes_in_use is not None:
        text = f"{event.bytes_in_use / GiB:.1f} GiB"
        if event.peak_bytes is not None:
            text += f" (peak {event.peak_bytes / GiB:.1f})"
        parts.append(text)
    if event.gpu_used_bytes is not None and event.gpu_total_bytes:
        parts.append(f"GPU {event.gpu_used_bytes / GiB:.1f}/{event.gpu_total_bytes / GiB:.1f} GiB")
    if not parts and event.host_rss_bytes is not None:
        parts.append(f"RSS {event.host_rss_bytes / GiB:.1f} GiB")
    return ", ".join(parts) or "-"


def step_line(event: StepMetrics) -> str:
    """One line for a step: loss, learning rate, tokens/s, ETA and memory."""
    return (
        f"loss {event.loss:.4f}  lr {event.learning_rate:.2e}  "
        f"{event.tokens_per_s:,.0f} tok/s  ETA {format_duration(event.eta_s)}  "
        f"mem {format_memory(event)}"
    )


# --------------------------------------------------------------------------- the printer


class TrainPrinter:
    """Shows training events: a progress bar (step/total, loss, tokens/s, ETA, memory) on a
    terminal, or on anything else a plain step line every ``every_s`` seconds; eval and
    checkpoint lines always. Log lines are shown until the run starts (loading, data
    preparation); after that only warnings and errors (the rest is in the run's log.txt)."""

    def __init__(
        self, console: Console, *, live: bool | None = None, every_s: float = 10.0
    ) -> None:
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.every_s = every_s
        self.started: RunStarted | None = None
        self.last_step: StepMetrics | None = None
        self.finished: RunFinished | None = None
        self.best_eval: float | None = None
        self._progress: Any = None
        self._task: Any = None
        self._stages: dict[str, Any] = {}
        self._last_print = 0.0

    def __enter__(self) -> TrainPrinter:
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description:>8}"),
                BarColumn(bar_width=30),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None

    def print(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def __call__(self, event: Event) -> None:
        from rich.markup import escape

        from pipeline.events import (
            CheckpointSaved,
            EvalMetrics,
            LogLine,
            Progress,
            RunFinished,
            RunStarted,
            StageDone,
            StepMetrics,
        )

        if isinstance(event, StepMetrics):
            self._on_step(event)
        elif isinstance(event, EvalMetrics):
            best = self.best_eval is None or event.loss < self.best_eval
            self.best_eval = event.loss if best else self.best_eval
            mark = "  [green]best[/]" if best else ""
            self.print(
                f"[cyan]eval[/]  step {event.step}: loss {event.loss:.4f} "
                f"({event.tokens:,} tokens, {event.seconds:.1f} s){mark}"
            )
        elif isinstance(event, CheckpointSaved):
            self.print(
                f"[green]checkpoint[/] step {event.step} -> {escape(event.path)} "
                f"({event.seconds:.1f} s)"
            )
        elif isinstance(event, RunStarted):
            self._on_started(event)
        elif isinstance(event, RunFinished):
            self.finished = event
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, completed=event.step, visible=False)
        elif isinstance(event, Progress):
            if self._progress is None or self.started is not None:
                return
            task = self._stages.get(event.stage)
            if task is None:
                task = self._progress.add_task(event.stage, total=event.total, info="")
                self._stages[event.stage] = task
            self._progress.update(task, completed=event.done, total=event.total)
        elif isinstance(event, StageDone):
            if event.stage in self._stages and self._progress is not None:
                self._progress.update(self._stages.pop(event.stage), visible=False)
            if self.started is None:
                self.print(
                    f"[green]✓[/] {escape(event.stage)}: {escape(event.summary)} "
                    f"({event.seconds:.1f} s)"
                )
        elif isinstance(event, LogLine):
            if event.level == "info" and self.started is not None:
                return
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            self.print(f"[{style}]{escape(event.message)}[/]")

    def _on_started(self, event: RunStarted) -> None:
        from rich.markup import escape

        self.started = event
        resumed = f", resumed at step {event.start_step}" if event.start_step else ""
        self.print(f"[bold]Run[/] {escape(event.run_dir)}")
        self.print(
            f"  model {escape(event.model)}\n"
            f"  {event.train_examples:,} train / {event.eval_examples:,} eval examples, "
            f"{event.tokens_per_step:,} tokens per step, {event.total_steps:,} steps{resumed}"
        )
        if event.placement:
            self.print(f"  devices: {escape(event.placement)}")
        for task in self._stages.values():
            if self._progress is not None:
                self._progress.update(task, visible=False)
        self._stages.clear()
        if self._progress is not None:
            self._task = self._progress.add_task(
                "train", total=event.total_steps, completed=event.start_step, info=""
            )

    def _on_step(self, event: StepMetrics) -> None:
        self.last_step = event
        if self._progress is not None:
            if self._task is None:
                self._task = self._progress.add_task("train", total=event.total_steps, info="")
            self._progress.update(
                self._task, completed=event.step, total=event.total_steps, info=step_line(event)
            )
            self._progress.refresh()  # a step takes long enough; don't wait for the timer
            return
        now = time.monotonic()
        first = self._last_print == 0.0
        if first or now - self._last_print >= self.every_s or event.step == event.total_steps:
            self._last_print = now
            self.print(f"step {event.step}/{event.total_steps}  {step_line(event)}")


# --------------------------------------------------------------------------- Ctrl+C


class StopOnInterrupt:
    """The ``should_stop`` of a CLI run: the first SIGINT sets the flag (the trainer stops
    after the current step and saves a checkpoint), the second raises KeyboardInterrupt."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.requested = False
        self._previous: Any = None
        self._previous_term: dict[int, Any] = {}
        self._installed = False

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        self.console.print(
            "[yellow]Stopping after this step and saving a checkpoint "
            "(Ctrl+C again to abort at once)…[/]",
            highlight=False,
        )

    def _handle_term(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM / SIGHUP (``kill``, a closed SSH session): stop after this step with a
        checkpoint, like the first Ctrl+C."""
        self.requested = True

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._previous_term = {
                sig: signal.signal(sig, self._handle_term)
                for sig in (signal.SIGTERM, signal.SIGHUP)
            }
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            for sig, previous in self._previous_term.items():
                signal.signal(sig, previous or signal.SIG_DFL)
            self._installed = False


# --------------------------------------------------------------------------- train


def _memory_lines(profile: Profile, source: str) -> tuple[list[str], str | None]:
    """The estimate's lines and, when a GPU is found and it does not fit, the advice."""
    from pipeline.training.memory import estimate_for_card
    from pipeline.utils.gpu import nvml_memory

    lines, advice, _ = estimate_for_card(profile, nvml_memory(), source=source)
    return lines, advice


def _print_error(console: Console, exc: Any) -> None:
    from rich.markup import escape

    console.print(f"[bold red]{exc.title}:[/] {escape(exc.message)}", highlight=False)
    if exc.hint:
        console.print(f"[yellow]Hint:[/] {escape(exc.hint)}", highlight=False)


def _summary(result: Any, printer: TrainPrinter) -> str:
    from rich.markup import escape

    status = str(getattr(result, "status", "?"))
    colour = {"finished": "green", "stopped": "yellow"}.get(status, "red")
    step = getattr(result, "step", None)
    total = getattr(result, "total_steps", None)
    parts = [f"[bold {colour}]{status}[/] at step {step}/{total}"]
    final_loss = getattr(result, "final_loss", None)
    if final_loss is not None:
        parts.append(f"loss {final_loss:.4f}")
    best = getattr(result, "best_eval_loss", None)
    if best is not None:
        parts.append(f"best eval loss {best:.4f}")
    run_dir = getattr(result, "run_dir", None) or (printer.started and printer.started.run_dir)
    line = ", ".join(parts)
    message = getattr(result, "message", "")
    if message and status != "finished":
        line += f"\n{escape(str(message))}"
    if run_dir:
        final = Path(run_dir) / "final"
        where = f"adapter in {final}" if final.is_dir() else f"run in {run_dir}"
        line += f"\n{escape(where)}"
        if status == "stopped":
            line += f"\nContinue with: gemma-tui train --resume {escape(Path(run_dir).name)}"
    return line


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from gemma_tui.detach import apply_max_steps
    from pipeline.errors import JobCancelled, PipelineError
    from pipeline.profiles import load_profile

    err = Console(stderr=True, soft_wrap=True)
    if args.max_steps is not None and args.max_steps < 1:
        raise TrainUsageError(f"--max-steps must be at least 1, got {args.max_steps}.")
    if args.resume and args.run_dir:
        raise TrainUsageError("--resume continues a run in its own folder; leave --run-dir out.")
    if args.detach and args.run_dir:
        raise TrainUsageError(
            "--detach makes the run's folder in the workspace; leave --run-dir out."
        )
    if args.resume and args.max_steps is not None:
        raise TrainUsageError(
            "--resume continues a run to the length it was started with; leave --max-steps out "
            "(or start a new run)."
        )
    if args.profile is None:
        if not args.resume:
            raise TrainUsageError("--profile is required (a shipped name or a .toml file).")
        from pipeline.training.runs import resolve_run

        profile = load_profile(resolve_run(args.resume) / "profile.toml")
    else:
        profile = load_profile(args.profile)
    if args.devices is not None and not args.resume:
        from pipeline.training.trainer import with_devices

        profile = with_devices(profile, args.devices)  # saved with the run
    loaded = profile
    if args.max_steps is not None:
        profile = apply_max_steps(profile, args.max_steps)
    if args.data is None and profile.data.train_path is None and not args.resume:
        raise TrainUsageError(
            f"--data FILE is required: profile {profile.name} has no data.train_path."
        )
    glob = args.data is not None and any(c in args.data for c in "*?[")
    if args.data is not None and not glob and not Path(args.data).expanduser().exists():
        raise TrainUsageError(f"--data {args.data}: no such file or folder.")

    lines, advice = _memory_lines(profile, args.model or profile.model.source)
    for line in lines:
        err.print(f"[dim]{line}[/]", highlight=False)
    if advice:
        err.print(f"[yellow]{advice}[/]", highlight=False)

    if args.detach:
        return _detach(args, None if args.resume else loaded)

    from pipeline.training.trainer import train

    with StopOnInterrupt(err) as stop, TrainPrinter(err) as printer:
        try:
            result = train(
                profile,
                data=args.data,
                model=args.model,
                run_dir=args.run_dir,
                resume=args.resume,
                on_event=printer,
                should_stop=stop,
                devices=args.devices if args.resume else None,
            )
        except KeyboardInterrupt:
            printer.__exit__()
            where = printer.started.run_dir if printer.started else None
            err.print(
                "[yellow]Aborted.[/]"
                + (f" The last checkpoint in {where} is kept." if where else ""),
                highlight=False,
            )
            return EXIT_STOPPED
        except JobCancelled:
            printer.__exit__()
            err.print("[yellow]Stopped before the run started.[/]")
            return EXIT_STOPPED
        except PipelineError as exc:
            if printer.started is None:
                raise  # found before the run started: the caller prints it (exit 2)
            printer.__exit__()
            _print_error(err, exc)
            return EXIT_FAILED
    status = str(getattr(result, "status", "failed"))
    err.print(_summary(result, printer), highlight=False)
    if status == "finished":
        return EXIT_OK
    if status == "stopped":
        return EXIT_STOPPED
    return EXIT_FAILED


def _detach(args: argparse.Namespace, profile: Profile | None) -> int:
    """``train --detach``: start the run in the background, say where it is and how to follow
    and stop it."""
    from rich.console import Console
    from rich.markup import escape

    from gemma_tui.detach import launch_detached

    run = launch_detached(
        profile=profile,
        data=args.data,
        model=args.model,
        resume=args.resume,
        max_steps=None if args.resume else args.max_steps,
        devices=args.devices if args.resume else None,
    )
    name = run.run_dir.name
    out = Console(soft_wrap=True)
    what = "Resumed" if args.resume else "Started"
    out.print(
        f"[bold]{what}[/] run [bold]{escape(name)}[/] in the background (pid {run.pid}).\n"
        f"  folder:  {escape(str(run.run_dir))}\n"
        f"  output:  {escape(str(run.console_log))}\n"
        "It keeps running when this terminal or the SSH session closes. Follow it with\n"
        "  gemma-tui runs\n"
        f"  tail -f {escape(shlex.quote(str(run.run_dir / 'log.txt')))}\n"
        "  or the TUI's Runs screen (key 3).\n"
        f"Stop it (a checkpoint is saved) with: gemma-tui stop {escape(name)}\n"
        f"Continue a stopped run with: gemma-tui train --resume {escape(name)} --detach",
        highlight=False,
    )
    return EXIT_OK


# --------------------------------------------------------------------------- stop


def cmd_stop(args: argparse.Namespace) -> int:
    """Write a stop request for a running run; with --wait, wait until it has ended."""
    from rich.console import Console
    from rich.markup import escape

    from pipeline.training import runs

    if args.timeout is not None and args.timeout <= 0:
        raise TrainUsageError(f"--timeout must be positive, got {args.timeout:g}.")
    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    rdir = runs.resolve_run(args.run)
    name = escape(rdir.name)
    summary = runs.summarize_run(rdir)
    if not summary.status.startswith("running"):
        err.print(
            f"[yellow]Run {name} is not running[/] (status: {escape(summary.status)}); "
            "there is nothing to stop.",
            highlight=False,
        )
        if summary.status.startswith("stopped"):
            err.print(f"Continue it with: gemma-tui train --resume {name} --detach")
        return EXIT_FAILED
    runs.request_stop(rdir, reason=args.reason)
    after = runs.summarize_run(rdir)
    if not after.status.startswith("running"):  # it ended meanwhile: leave no stale request
        runs.clear_stop_request(rdir)
        err.print(
            f"[yellow]Run {name} ended before the request reached it[/] "
            f"(status: {escape(after.status)}).",
            highlight=False,
        )
        return EXIT_FAILED
    who = f"process {summary.pid}" + (f" on {escape(summary.host)}" if summary.host else "")
    out.print(
        f"Asked run {name} ({who}) to stop: it saves a checkpoint after the current step.",
        highlight=False,
    )
    if not args.wait:
        out.print(f"Check with: gemma-tui runs  (or gemma-tui stop {name} --wait)")
        return EXIT_OK
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while after.status.startswith("running"):
        if deadline is not None and time.monotonic() > deadline:
            err.print(
                f"[yellow]Run {name} is still running after {args.timeout:g} s[/] "
                "(the stop request stays; it stops after its current step).",
                highlight=False,
            )
            return EXIT_FAILED
        time.sleep(0.2)
        after = runs.summarize_run(rdir)
    colour = {"finished": "green", "stopped": "yellow"}.get(after.status, "red")
    steps = f" at step {after.step}/{after.total_steps}" if after.total_steps else ""
    line = f"Run {name}: [bold {colour}]{escape(after.status)}[/]{steps}"
    if after.error and after.status != "finished":
        line += f"\n{escape(after.error)}"
    out.print(line, highlight=False)
    if after.status == "stopped":
        out.print(f"Continue with: gemma-tui train --resume {name} --detach", highlight=False)
    return EXIT_OK if after.status in ("stopped", "finished") else EXIT_FAILED


# --------------------------------------------------------------------------- runs


def cmd_runs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from pipeline.training.runs import list_runs

    runs = list_runs()
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2, ensure_ascii=False))
        return EXIT_OK
    out = Console(soft_wrap=True)
    if not runs:
        out.print("No runs yet. Start one with: gemma-tui train --profile P --data FILE")
        return EXIT_OK
    table = Table(box=None, pad_edge=False)
    columns = ["run", "status", "steps", "eval loss", "duration", "started"]
    with_model = out.width >= 120  # a model's description is long: only on wide terminals
    for name in [*columns, "model"] if with_model else columns:
        right = name in ("steps", "eval loss", "duration", "started")
        table.add_column(name, justify="right" if right else "left", no_wrap=name != "model")
    colours = {"finished": "green", "running": "cyan", "failed": "red"}
    for r in runs:
        colour = colours.get(r.status, "yellow")
        steps = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step or "-")
        best = f"{r.best_eval_loss:.4f}" if r.best_eval_loss is not None else "-"
        row = [
            escape(r.name),
            f"[{colour}]{escape(r.status)}[/]",
            steps,
            best,
            format_duration(r.duration_s),
            format_age(r.age_s),
        ]
        if with_model:
            row.append(escape(r.model or "-"))
        table.add_row(*row)
    out.print(table)
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def add_commands(commands: Any) -> None:
    """Add ``train``, ``runs`` and ``stop`` to the top-level subparsers."""
    p = commands.add_parser(
        "train",
        help="fine-tune with LoRA: progress, evals and checkpoints on the terminal "
        "(or in the background with --detach)",
        description="Fine-tune a Gemma 3 model with LoRA. Ctrl+C stops after the current step "
        "and saves a checkpoint (a second Ctrl+C aborts). With --detach the run goes on in "
        "the background, also after this terminal or the SSH session closes: follow it with "
        "`gemma-tui runs` or the TUI's Runs screen, stop it with `gemma-tui stop RUN`. "
        "Exit codes: 0 finished (with --detach: started), 1 failed, 2 usage or environment "
        "error, 130 stopped.",
    )
    p.add_argument(
        "--profile",
        metavar="P",
        help="a shipped profile name (gemma-tui profile list) or a .toml file; "
        "with --resume, the run's own profile by default",
    )
    p.add_argument(
        "--data",
        metavar="FILE",
        help="training data (.json/.jsonl/.csv/.parquet, a folder or a glob); "
        "default: the profile's data.train_path",
    )
    p.add_argument(
        "--model",
        metavar="SOURCE",
        help='base model: "embedded", "tiny", a .gguf file, a keras-hub preset, a Hugging Face '
        "folder or hf://owner/name (default: the profile's model.source)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a run (its name under the workspace's runs/ or its folder) from its "
        "latest checkpoint",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="stop after N optimizer steps (overrides train.max_steps and train.epochs)",
    )
    p.add_argument(
        "--devices",
        metavar="N",
        help='accelerators to train on: "auto" (every visible GPU) or a count; overrides '
        "train.devices, also with --resume (a run started on 2 GPUs can go on on 1). Several "
        "hosts: see docs/training.md",
    )
    p.add_argument(
        "--run-dir",
        metavar="DIR",
        help="write the run here (default: <workspace>/runs/<profile>-<date>-<time>/)",
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="run in the background, in a session of its own (it survives the terminal and "
        "the SSH session closing), output in <run>/console.txt; prints the run folder and pid "
        "and returns; also with --resume",
    )
    p.set_defaults(func=cmd_train)

    p = commands.add_parser(
        "runs",
        help="list training runs, newest first",
        description="List the workspace's training runs, newest first. A run whose process "
        "ended without saying so is listed as 'stopped (process gone)'.",
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON on stdout")
    p.set_defaults(func=cmd_runs)

    p = commands.add_parser(
        "stop",
        help="ask a running run (e.g. a detached one) to stop after its current step",
        description="Ask a running training run to stop: it finishes its current step, saves "
        "a checkpoint and ends with status 'stopped' (continue it with `gemma-tui train "
        "--resume RUN`). Works for any run: detached, in another terminal, or in the TUI. "
        "Exit codes: 0 asked (with --wait: it stopped or finished), 1 the run is not running "
        "(or it failed, or --timeout passed), 2 no such run.",
    )
    p.add_argument("run", metavar="RUN", help="a run's name (gemma-tui runs) or its folder")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until the run has ended and print its final status",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="with --wait: give up after S seconds (exit 1; the request stays)",
    )
    p.add_argument(
        "--reason",
        default="gemma-tui stop",
        metavar="TEXT",
        help="recorded in the request and in the run's final message",
    )
    p.set_defaults(func=cmd_stop)
