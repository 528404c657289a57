"""The gemma-tui application: modes, global keys, the command palette. Routing only.

Each stage of a fine-tune is a Textual *mode* with its own screen stack: ``dataset``,
``train``, ``runs``, ``export`` and ``chat`` (:data:`MODES`, keys 1 to 5). Workers belong
to the mode screens (which stay mounted while the app runs) or to the app, never to a modal.

Startup is kept light: nothing here imports the data stack (pandas, pandera, pyarrow,
datasets, through ``pipeline.data``'s modules; only its plain ``pipeline.data.types``) or the
model stack (jax, keras); the screens import them inside workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Provider

from gemma_tui.screens.chat import ChatScreen
from gemma_tui.screens.dataset import DatasetScreen
from gemma_tui.screens.export import ExportScreen
from gemma_tui.screens.help import HelpScreen, HelpSection, describe_bindings
from gemma_tui.screens.job_screen import JobScreen
from gemma_tui.screens.modals import ConfirmModal
from gemma_tui.screens.runs import RunsScreen
from gemma_tui.screens.train import TrainScreen

if TYPE_CHECKING:
    from textual.screen import Screen


@dataclass(frozen=True, slots=True)
class Mode:
    """One stage of the app: a mode name, its title and key, and its base screen."""

    name: str
    title: str
    key: str
    screen: Callable[[GemmaTuiApp], Screen[Any]]


MODES: tuple[Mode, ...] = (
    Mode("dataset", "Dataset", "1", lambda app: DatasetScreen(app.initial_source)),
    Mode("train", "Train", "2", lambda app: TrainScreen()),
    Mode("runs", "Runs", "3", lambda app: RunsScreen()),
    Mode("export", "Export", "4", lambda app: ExportScreen()),
    Mode("chat", "Chat", "5", lambda app: ChatScreen()),
)


@dataclass(frozen=True, slots=True)
class PaletteCommand:
    name: str
    help: str
    action: str
    """An action string run by the app, e.g. ``"dataset_command('open')"``."""


PALETTE_COMMANDS: tuple[PaletteCommand, ...] = (
    PaletteCommand(
        "Open dataset",
        "Open a .jsonl, .json, .csv or .parquet file, or a folder",
        "dataset_command('open')",
    ),
    PaletteCommand(
        "Reopen dataset with a format or names",
        "Read the open file again with another format, or other column or role names",
        "dataset_command('reopen')",
    ),
    PaletteCommand(
        "Validate dataset",
        "Check every row and count the problems by kind",
        "dataset_command('validate')",
    ),
    PaletteCommand(
        "Convert dataset",
        "Write the valid rows as ShareGPT or ChatML JSONL, and a rejects file",
        "dataset_command('convert')",
    ),
    PaletteCommand(
        "Deduplicate dataset", "Remove exact and near duplicates", "dataset_command('dedup')"
    ),
    PaletteCommand("Split dataset", "Write a train and an eval file", "dataset_command('split')"),
    PaletteCommand(
        "Dataset statistics", "Token-length histogram and summary", "dataset_command('stats')"
    ),
    PaletteCommand(
        "Statistics sequence length",
        "Change the max_seq_len the token statistics measure against",
        "dataset_command('max_seq_len')",
    ),
    PaletteCommand(
        "Jump to next error", "Move to the next invalid row", "dataset_command('next_error')"
    ),
    PaletteCommand(
        "Jump to previous error",
        "Move to the previous invalid row",
        "dataset_command('previous_error')",
    ),
    PaletteCommand("Cancel job", "Stop the running job", "dataset_command('cancel_job')"),
    PaletteCommand("Show runs", "Every run in the workspace (key 3)", "runs_command('refresh')"),
    PaletteCommand(
        "Open run",
        "Curves, checkpoints, profile and log of the selected run; follows it live",
        "runs_command('open')",
    ),
    PaletteCommand(
        "Compare marked runs",
        "The loss curves of the runs marked with space, on one plot",
        "runs_command('compare')",
    ),
    PaletteCommand(
        "Resume run",
        "Continue the selected stopped run from its last checkpoint, here or detached",
        "runs_command('resume')",
    ),
    PaletteCommand(
        "Stop run",
        "Ask the selected running run to stop after its current step",
        "runs_command('stop')",
    ),
    PaletteCommand(
        "Delete run", "Delete the selected run's folder (asks first)", "runs_command('delete')"
    ),
    PaletteCommand(
        "Chat with a model",
        "The embedded model, a run's checkpoint or an export (key 5, then F2)",
        "chat_command('pick')",
    ),
    PaletteCommand(
        "Compare two models",
        "The same messages to two models side by side (Chat screen, F3)",
        "chat_command('compare')",
    ),
    PaletteCommand(
        "Chat settings",
        "System prompt, sampling, context, device, runtime (Chat screen, F4)",
        "chat_command('settings')",
    ),
    PaletteCommand(
        "Save chat",
        "Append the conversation to a ShareGPT JSONL file (Chat screen, ctrl+s)",
        "chat_command('save')",
    ),
    PaletteCommand(
        "New chat conversation",
        "Forget the conversation (Chat screen, ctrl+n)",
        "chat_command('new_conversation')",
    ),
    PaletteCommand("Help", "Show every key", "help"),
    PaletteCommand("Quit", "Quit gemma-tui (asks first while a job runs)", "quit"),
)


class GemmaCommands(Provider):
    """The app's own commands in the command palette (ctrl+p)."""

    def _hit_callback(self, action: str) -> Callable[[], Any]:
        return partial(self.app.run_action, action)

    async def discover(self) -> Hits:
        for command in PALETTE_COMMANDS:
            yield DiscoveryHit(command.name, self._hit_callback(command.action), help=command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in PALETTE_COMMANDS:
            score = matcher.match(command.name)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(command.name),
                    self._hit_callback(command.action),
                    help=command.help,
                )


class GemmaTuiApp(App[None]):
    """The gemma-tui app. ``source``: a dataset to open at start (as the user typed it)."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "gemma-tui"
    DEFAULT_MODE = MODES[0].name
    COMMANDS: ClassVar[set[type[Provider] | Callable[[], type[Provider]]]] = App.COMMANDS | {
        GemmaCommands
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            Binding(mode.key, f"switch_mode('{mode.name}')", f"{mode.title} screen", show=False)
            for mode in MODES
        ),
        Binding("f1,question_mark", "help", "Help", key_display="?"),
        Binding("q,ctrl+q", "quit", "Quit", key_display="q"),
    ]

    def __init__(self, source: str | None = None) -> None:
        super().__init__()
        self.initial_source = source
        for mode in MODES:
            self.add_mode(mode.name, partial(mode.screen, self))

    # ---- commands

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        # Ours replace the built-in Quit (ours asks first while a job runs).
        for command in super().get_system_commands(screen):
            if command.title != "Quit":
                yield command

    async def action_dataset_command(self, action: str) -> None:
        """Run ``action`` on the Dataset screen (switching to it first)."""
        await self.switch_mode("dataset")
        await self.run_action(action, self.screen)

    async def action_runs_command(self, action: str) -> None:
        """Run ``action`` on the Runs screen (switching to it first)."""
        await self.switch_mode("runs")
        await self.run_action(action, self.screen)

    async def action_chat_command(self, action: str) -> None:
        """Run ``action`` on the Chat screen (switching to it first)."""
        await self.switch_mode("chat")
        await self.run_action(action, self.screen)

    async def chat_with(self, ref: str) -> None:
        """Show the Chat screen talking to ``ref`` (a run folder, a bundle, a model source)."""
        await self.switch_mode("chat")
        screen = self.get_screen_stack("chat")[0]
        if isinstance(screen, ChatScreen):
            screen.open_ref(ref)

    async def resume_run_here(self, run_dir: Path) -> None:
        """Resume the stopped run in ``run_dir`` in this process, on the Train screen."""
        await self.switch_mode("train")
        screen = self.screen
        if isinstance(screen, TrainScreen):
            screen.resume_run(run_dir)

    def help_sections(self) -> list[HelpSection]:
        global_keys = describe_bindings(self, self.BINDINGS)
        global_keys.append(("^p", "Command palette: every action by name"))
        sections: list[HelpSection] = [("Global", global_keys)]
        for screen in self.screen_stack:
            sections_of: Callable[[], list[HelpSection]] | None = getattr(
                screen, "help_sections", None
            )
            if callable(sections_of):
                sections.extend(sections_of())
        return sections

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.help_sections()))

    def _busy(self) -> bool:
        for mode in MODES:
            try:
                stack = self.get_screen_stack(mode.name)
            except KeyError:  # the mode was never opened
                continue
            if any(isinstance(screen, JobScreen) and screen.busy for screen in stack):
                return True
        return False

    def _training_screen(self) -> TrainScreen | None:
        """The Train screen while it trains in this process."""
        try:
            stack = self.get_screen_stack("train")
        except KeyError:
            return None
        return next((s for s in stack if isinstance(s, TrainScreen) and s.busy), None)

    async def action_quit(self) -> None:
        training = self._training_screen()
        if training is not None:

            def stop_and_quit(yes: bool | None) -> None:
                if yes:
                    training.stop_run(then_quit=True)
                    self.notify("Stopping after this step, then quitting…", timeout=30)

            self.push_screen(
                ConfirmModal(
                    "Training runs in this process",
                    "Quitting stops it after the current step, with a checkpoint (resume it "
                    "later from the Runs screen). A detached run (F6) keeps going instead.",
                    yes="Stop and quit",
                    no="Stay",
                ),
                stop_and_quit,
            )
            return
        if not self._busy():
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                # Threads stop at their next should_stop() check; exit waits for them.
                self.workers.cancel_all()
                self.exit()

        self.push_screen(
            ConfirmModal("A job is running", "Cancel it and quit?", yes="Quit", no="Stay"),
            answered,
        )


def run_app(path: str | None = None) -> None:
    """Run the TUI (the ``gemma-tui`` command with no arguments); ``path`` opens a dataset."""
    GemmaTuiApp(path).run()
