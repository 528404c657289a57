"""The Train screen: pick a profile, edit it in place, see whether it fits, start, watch, stop.

Left, the setup: a profile (shipped, or saved in the workspace's ``profiles/``), every field
editable and checked as you type (:class:`~gemma_tui.widgets.profile_form.ProfileForm`;
``data.train_path`` starts as the file open in the Dataset screen), and the memory estimate
beside the card's VRAM (NVML), with the change that makes it fit when it does not.
Right, the run (:class:`~gemma_tui.widgets.run_monitor.RunMonitor`).

A run started with F5 trains *in this process*: :func:`pipeline.training.trainer.train` in a
thread worker, its events batched by the bridge (a few redraws a second; JAX computes with
the GIL released, so keys are answered while a step runs). Stopping asks first and ends
with a checkpoint; quitting the app while it trains asks, stops, then quits. A run started
with F6 is *detached* (:func:`gemma_tui.detach.launch_detached`): its own process, which
outlives the TUI and the SSH session; the screen follows its files, and stopping it writes
a stop request it obeys after its current step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static
from textual.worker import Worker, WorkerState, get_current_worker

from gemma_tui.bridge import EventBridge
from gemma_tui.messages import JobEventsBatched
from gemma_tui.screens.help import HelpSection, describe_bindings
from gemma_tui.screens.job_screen import JOB_GROUP, JobScreen, RunningJob
from gemma_tui.screens.modals import ConfirmModal, ErrorModal
from gemma_tui.widgets.job_bar import JobBar
from gemma_tui.widgets.profile_form import ProfileForm
from gemma_tui.widgets.run_monitor import RunMonitor

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.profiles import Profile

GiB = 1024**3

TRAIN_BINDINGS: list[BindingType] = [
    Binding("f5,ctrl+t", "start", "Start", key_display="F5", tooltip="Train in this process"),
    Binding(
        "f6",
        "start_detached",
        "Start detached",
        tooltip="Train in its own process: it keeps going when the TUI or SSH closes",
    ),
    Binding("escape", "stop", "Stop", tooltip="Stop the run after this step, with a checkpoint"),
    Binding("ctrl+s", "save_profile", "Save as", key_display="^s"),
    Binding("f2", "toggle_setup", "Setup", tooltip="Show or hide the profile"),
]


def default_profile_name(card_total_bytes: int | None, names: list[str]) -> str:
    """The shipped profile that suits the card: cpu-smoke without one, else the largest
    card profile that fits (``h100-80gb``, ``rtx4090-24gb``, ``rtx3060-12gb``)."""
    choice = "cpu-smoke"
    if card_total_bytes is not None:
        gib = card_total_bytes / GiB
        for name, need in (("rtx3060-12gb", 10), ("rtx4090-24gb", 20), ("h100-80gb", 70)):
            if gib >= need:
                choice = name
    return choice if choice in names else (names[0] if names else choice)


def estimate_lines(
    profile: Profile, card: tuple[int, int] | None
) -> tuple[list[str], str | None, bool | None]:
    """:func:`~pipeline.training.memory.estimate_for_card`, saying so when there is no GPU."""
    from pipeline.training.memory import estimate_for_card

    lines, advice, fits = estimate_for_card(profile, card)
    if card is None and len(lines) > 1:
        lines.append("No NVIDIA GPU found: training runs on the CPU, in host memory.")
    return lines, advice, fits


def _yield_cpu_to_the_ui() -> None:
    """Lower this thread's CPU priority (Linux: a thread is a task with its own nice value,
    inherited by the threads it starts, such as XLA's CPU pool). Training on the CPU then
    leaves the UI thread its share of the cores. A no-op where it is not allowed."""
    import contextlib
    import os

    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class SaveProfileModal(ModalScreen[str | None]):
    """Asks for a new profile's name; dismisses it (checked: 1 to 64 plain characters)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    AUTO_FOCUS = "#save-name"

    def __init__(self, name: str, folder: Path) -> None:
        super().__init__(classes="modal")
        self.initial = name
        self.folder = folder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Save the profile as", classes="dialog-title")
            yield Label(
                f"A new TOML file in {self.folder}; it joins the profile list.",
                classes="dialog-help",
            )
            yield Input(self.initial, id="save-name")
            yield Label("", classes="dialog-error", id="save-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (enter)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def _save(self) -> None:
        import re

        name = self.query_one(Input).value.strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            self.query_one("#save-error", Label).update(
                "Use 1 to 64 letters, digits, '.', '_' or '-' (starting with a letter or digit)."
            )
            return
        self.dismiss(name)

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self._save()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self._save()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class TrainScreen(JobScreen):
    """See the module docstring."""

    CSS_PATH = Path(__file__).with_name("train.tcss")
    BINDINGS: ClassVar[list[BindingType]] = TRAIN_BINDINGS
    JOB_HINT = "esc stop (with a checkpoint)"

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._quit_when_stopped = False
        self.card: tuple[int, int] | None = None
        """NVML (used, total) bytes of GPU 0, read when the screen opens; None without one."""
        self.detached: Path | None = None
        """The run folder of a detached run this screen follows."""
        self.choices: dict[str, str] = {}
        """Profile list: value (a shipped name or a workspace file) -> label."""
        self.train_fn: Callable[..., Any] | None = None
        """What trains in this process: :func:`pipeline.training.trainer.train` when None;
        tests put a scripted event source here (same signature)."""

    # ---- layout

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        yield JobBar(id="job-bar")
        with Horizontal(id="train-body"):
            with Vertical(id="setup"):
                with Horizontal(id="profile-row"):
                    yield Label("Profile", id="profile-label")
                    yield Select[str]([], allow_blank=True, compact=True, id="profile-select")
                yield ProfileForm(id="profile-form")
                yield Static(id="estimate")
            yield RunMonitor(id="monitor")
        yield Footer()

    @property
    def monitor(self) -> RunMonitor:
        return self.query_one(RunMonitor)

    @property
    def form(self) -> ProfileForm:
        return self.query_one(ProfileForm)

    def on_mount(self) -> None:
        from pipeline.utils.gpu import nvml_memory

        self.title = "Train"
        self.query_one("#setup").border_title = "Profile"
        self.monitor.border_title = "Run"
        self.card = nvml_memory()
        names = self._fill_profiles()
        shipped = [n for n in names if "/" not in n]
        self.query_one("#profile-select", Select).value = default_profile_name(
            self.card[1] if self.card else None, shipped
        )

    def on_screen_resume(self) -> None:
        """Coming from the Dataset screen: train on the file open there, unless set."""
        source = self._dataset_source()
        if source and not self.busy and not self.form.value("data.train_path").strip():
            self.form.set_value("data.train_path", source)

    def _dataset_source(self) -> str | None:
        from gemma_tui.screens.dataset import DatasetScreen

        try:
            stack = self.app.get_screen_stack("dataset")
        except KeyError:
            return None
        for screen in stack:
            if isinstance(screen, DatasetScreen) and screen.source:
                return screen.source
        return None

    def _profiles_dir(self) -> Path:
        from pipeline.workspace import Workspace

        return Workspace.default().root / "profiles"

    def _fill_profiles(self) -> list[str]:
        from pipeline.profiles import list_profiles

        choices = {name: name for name in list_profiles()}
        folder = self._profiles_dir()
        for name in list_profiles(folder):
            choices[str(folder / f"{name}.toml")] = f"{name} (saved)"
        self.choices = choices
        select = self.query_one("#profile-select", Select)
        select.set_options([(label, value) for value, label in choices.items()])
        return list(choices)

    def help_sections(self) -> list[HelpSection]:
        return [
            ("Train", describe_bindings(self.app, self.BINDINGS)),
            (
                "Profile fields",
                [
                    ("tab", "Next field; each is checked as you type (red: wrong)"),
                    ("data.train_path", "The dataset (the Dataset screen's file by default)"),
                    ("model.source", "embedded, tiny, a .gguf, a preset or an HF folder"),
                ],
            ),
        ]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        running = self.busy or self.detached is not None
        if action in ("start", "start_detached", "save_profile"):
            return None if running else True
        if action == "stop":
            return True if running else None
        return True

    # ---- the profile

    @on(Select.Changed, "#profile-select")
    def _profile_chosen(self, event: Select.Changed) -> None:
        from pipeline.errors import ProfileError
        from pipeline.profiles import load_profile

        if not isinstance(event.value, str):
            return
        keep = {"data.train_path": self.form.value("data.train_path")}
        try:
            profile = load_profile(event.value)
        except ProfileError as error:
            self.app.push_screen(ErrorModal.for_exception(error))
            return
        if not keep["data.train_path"].strip():
            keep["data.train_path"] = profile.data.train_path or self._dataset_source() or ""
        self.form.load(profile, edits={k: v for k, v in keep.items() if v})

    @on(ProfileForm.Changed)
    def _profile_changed(self, event: ProfileForm.Changed) -> None:
        self._show_estimate(event.profile)

    def _show_estimate(self, profile: Profile | None) -> None:
        from rich.text import Text

        box = self.query_one("#estimate", Static)
        if profile is None:
            box.update(Text("Fix the fields in red to see the memory estimate.", "red"))
            box.set_class(False, "-warning")
            return
        lines, advice, fits = estimate_lines(profile, self.card)
        text = Text("\n".join(lines))
        if fits is True:
            text.append("\nFits this card.", "green")
        elif fits is False:
            text.append("\nWill not fit this card.", "bold red")
            if advice:
                text.append("\n" + advice, "yellow")
        box.update(text)
        box.set_class(fits is False, "-warning")

    def action_save_profile(self) -> None:
        profile = self.form.profile
        if profile is None:
            self.notify("Fix the fields in red first.", severity="error")
            return
        folder = self._profiles_dir()

        def chosen(name: str | None) -> None:
            import dataclasses

            from pipeline.errors import ProfileError
            from pipeline.profiles import save_profile

            if not name:
                return
            path = folder / f"{name}.toml"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                save_profile(dataclasses.replace(profile, name=name), path)
            except (OSError, ProfileError) as error:
                self.app.push_screen(ErrorModal.for_exception(error))
                return
            self._fill_profiles()
            self.query_one("#profile-select", Select).value = str(path)
            self.notify(f"Saved {path}", title="Profile saved")

        self.app.push_screen(SaveProfileModal(f"{profile.name}-custom", folder), chosen)

    def action_toggle_setup(self) -> None:
        # display on the pane itself: a class on an ancestor would restyle every field
        setup = self.query_one("#setup")
        setup.display = not setup.display

    # ---- starting

    def _ready_profile(self) -> Profile | None:
        profile = self.form.profile
        if profile is None:
            self.notify(
                "\n".join(self.form.problems) or "The profile has errors.",
                title="Fix the profile first",
                severity="error",
            )
            return None
        if not profile.data.train_path:
            self.notify(
                "Set data.train_path (or open a dataset in the Dataset screen, key 1).",
                title="No training data",
                severity="error",
            )
            return None
        return profile

    def _running_layout(self, running: bool) -> None:
        """While a run goes, the setup is read-only and hidden (F2 shows it); after, the
        run's result stays in view and the setup is editable again."""
        self.form.set_disabled(running)
        self.query_one("#profile-select", Select).disabled = running
        if running:
            self.query_one("#setup").display = False
        self.refresh_bindings()

    def action_start(self) -> None:
        profile = self._ready_profile()
        if profile is not None:
            self.start_run(profile)

    def start_run(self, profile: Profile | None, *, resume: Path | None = None) -> None:
        """Train ``profile`` (or resume the run in ``resume``) in this process."""
        if self.detached is not None:
            self.notify("A detached run is shown; stop following it first.", severity="warning")
            return
        title = f"Resuming {resume.name}" if resume else f"Training {profile and profile.name}"
        job = self.start_job("train", title)
        if job is None:
            return
        self._stop.clear()
        label = resume.name if resume else (profile.name if profile else "run")
        self.monitor.reset(label, "starting")
        self._running_layout(True)
        job.worker = self._train_worker(job.job_id, profile, resume)

    def resume_run(self, run_dir: Path) -> None:
        """Resume the stopped run in ``run_dir`` in this process (from the Runs screen)."""
        self.start_run(None, resume=run_dir)

    @work(thread=True, exit_on_error=False, group=JOB_GROUP)
    def _train_worker(self, job_id: int, profile: Profile | None, resume: Path | None) -> Any:
        from pipeline.profiles import load_profile

        if self.train_fn is None:
            from pipeline.training.trainer import train
        else:
            train = self.train_fn
        if self.card is None:
            _yield_cpu_to_the_ui()
        worker = get_current_worker()
        bridge = EventBridge(self.post_message, job_id)
        stop: Callable[[], bool] = lambda: self._stop.is_set() or worker.is_cancelled  # noqa: E731
        try:
            if resume is not None:
                return train(
                    load_profile(resume / "profile.toml"),
                    resume=resume,
                    on_event=bridge,
                    should_stop=stop,
                )
            assert profile is not None
            return train(profile, on_event=bridge, should_stop=stop)
        finally:
            bridge.close()

    @on(JobEventsBatched)
    def _train_events(self, message: JobEventsBatched) -> None:
        from pipeline.events import Progress, RunStarted, StepMetrics

        if not self._is_current(message.job_id):
            return
        self.monitor.add_events(message.events)
        for event in message.events:
            if isinstance(event, RunStarted):
                self.monitor.set_state(
                    "stopping after this step…" if self._stop.is_set() else "training"
                )
            elif isinstance(event, StepMetrics):
                self.query_one(JobBar).show_progress(
                    Progress("train", event.step, event.total_steps, "steps")
                )

    def job_succeeded(self, kind: str, title: str, result: Any) -> None:
        status = str(getattr(result, "status", "finished"))
        self.monitor.set_state(status)
        name = Path(str(getattr(result, "run_dir", ""))).name
        step, total = getattr(result, "step", "?"), getattr(result, "total_steps", "?")
        message = f"{name}: {status} at step {step}/{total}."
        if status == "stopped":
            message += " Resume it from the Runs screen (3), or: gemma-tui train --resume " + name
        elif status == "failed":
            message += f" {getattr(result, 'message', '')}"
        self.notify(
            message,
            title=f"Run {status}",
            severity="information" if status != "failed" else "error",
            timeout=10,
        )

    def _finish_job(self) -> RunningJob | None:
        job = super()._finish_job()
        self._running_layout(False)
        if self._quit_when_stopped:
            self.app.exit()
        return job

    @on(Worker.StateChanged)
    def _train_state(self, event: Worker.StateChanged) -> None:
        if event.worker.group == JOB_GROUP and event.state is WorkerState.ERROR:
            self.monitor.set_state("failed")

    # ---- detached runs

    def action_start_detached(self) -> None:
        profile = self._ready_profile()
        if profile is None or self.say_busy():
            return
        self.monitor.reset(profile.name, "launching")
        self._launch_worker(profile)

    @work(thread=True, exit_on_error=False, group="launch")
    def _launch_worker(self, profile: Profile) -> Any:
        from gemma_tui.detach import launch_detached

        return launch_detached(profile=profile)

    @on(Worker.StateChanged)
    def _launched(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "launch":
            return
        if event.state is WorkerState.SUCCESS:
            launched = event.worker.result
            if launched is None:
                return
            self.follow_run(launched.run_dir)
            self.notify(
                f"{launched.run_dir.name} runs as process {launched.pid}; it keeps going if "
                "you quit. Find it later in the Runs screen (3).",
                title="Detached run started",
                timeout=10,
            )
        elif event.state is WorkerState.ERROR and event.worker.error is not None:
            self.monitor.set_state("not started")
            self.app.push_screen(ErrorModal.for_exception(event.worker.error))

    def follow_run(self, run_dir: Path) -> None:
        """Show a run written by another process (a detached run) and follow it."""
        self.detached = run_dir
        self.monitor.follow(run_dir)
        self._running_layout(True)

    @on(RunMonitor.Ended)
    def _followed_ended(self, event: RunMonitor.Ended) -> None:
        if event.run_dir == self.detached:
            self.detached = None
            self._running_layout(False)
            self.notify(f"{event.run_dir.name}: {event.status}.", title="Detached run ended")

    # ---- stopping

    def action_stop(self) -> None:
        if self.busy:
            if self._stop.is_set():
                self.notify("Already stopping: the run ends after its current step.")
                return

            def answered(yes: bool | None) -> None:
                if yes:
                    self.stop_run()

            self.app.push_screen(
                ConfirmModal(
                    "Stop training?",
                    "The run stops after the current step and saves a checkpoint; you can "
                    "resume it later from the Runs screen.",
                    yes="Stop",
                    no="Keep training",
                ),
                answered,
            )
        elif self.detached is not None:
            run_dir = self.detached

            def stop_detached(yes: bool | None) -> None:
                from pipeline.training.runs import request_stop

                if yes:
                    request_stop(run_dir, reason="stopped from the Train screen")
                    self.monitor.set_state("stop requested")

            self.app.push_screen(
                ConfirmModal(
                    "Stop the detached run?",
                    f"{run_dir.name} stops after its current step and saves a checkpoint.",
                    yes="Stop",
                    no="Keep training",
                ),
                stop_detached,
            )

    def stop_run(self, *, then_quit: bool = False) -> None:
        """Ask the in-process run to stop after this step (with a checkpoint)."""
        self._stop.set()
        self._quit_when_stopped = self._quit_when_stopped or then_quit
        self.monitor.set_state("stopping after this step…")
        self.query_one(JobBar).show_detail("stopping after this step (saving a checkpoint)…")
