"""The Chat screen (key 5): talk to the base model, any run's checkpoint, or any export.

One pane, or two side by side (compare mode, F3): each pane (:class:`~gemma_tui.widgets.
chat_log.ChatPane`) holds a *slot*: a :class:`~pipeline.inference.targets.ChatTarget`, the
:class:`~pipeline.inference.chat.Backend` it was opened as, and a
:class:`~pipeline.inference.chat.ChatSession` (the conversation). The input under the panes
stays focused and usable all the time.

* **Picking** (F2; F3 for the second pane): the targets are listed in a thread
  (:func:`~pipeline.inference.targets.list_targets`), then :class:`~gemma_tui.screens.
  chat_modals.TargetPickerModal` shows them; a typed name is resolved by
  :func:`~pipeline.inference.targets.resolve_target`. Loading
  (:func:`~pipeline.inference.targets.open_target`) runs in a thread worker with an
  :class:`~gemma_tui.bridge.EventBridge`, its stages and progress on the pane's status line;
  esc cancels it. The Runs screen's ``t`` opens this screen on a run's newest checkpoint.
* **Talking**: Enter sends the message to every loaded pane; each reply is generated in its
  own thread worker (two at once in compare mode), its text posted in batches of about 20 a
  second (:class:`~gemma_tui.chat_stream.DeltaBatcher`) and appended to the pane's Markdown.
  The status line shows "generating… N tokens · first token X s · Y tok/s", then the reply's
  own numbers. esc stops every reply (what was written is kept, marked stopped).
* **While a reply is written** the input stays editable; Enter then *queues* the message (one
  at most, shown above the input) and sends it when the replies end; esc stops the replies
  and puts the queued message back into the input.
* **Errors** (:class:`~pipeline.errors.ChatError`: a message too long for the context, a
  model that cannot be opened or fails) are shown in the pane's log, red, with the hint; the
  conversation is unchanged and the next message works.
* **Settings** (F4): system prompt and sampling apply to the next message; context, device,
  merge and runtime reload the loaded models (the conversation is kept).
* **Saving** (ctrl+s) appends the conversation as one ShareGPT JSON line (what the Dataset
  screen reads) to ``<workspace>/chats/<model>-<time>.jsonl`` or a path typed there.

A slot's backend is used by one thread at a time (its lock): a reply, a load that replaces
it, or closing it. Leaving the screen for another one stops the replies (the models stay
loaded, so coming back is instant); quitting, or the screen going away, stops them and closes
every backend. Nothing heavy is imported here: the model stack loads inside the workers.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static
from textual.worker import get_current_worker

from gemma_tui.bridge import EventBridge
from gemma_tui.chat_stream import DeltaBatcher, ReplyStreamed
from gemma_tui.messages import JobEventsBatched, JobMilestoneReached, JobProgressed
from gemma_tui.screens.chat_modals import (
    ChatSettings,
    ChatSettingsModal,
    Pick,
    TargetPickerModal,
    default_save_path,
)
from gemma_tui.screens.help import HelpSection, describe_bindings
from gemma_tui.screens.modals import OutputChoice, OutputField, OutputPathsModal
from gemma_tui.widgets.chat_log import ChatPane, live_text, stats_text
from gemma_tui.widgets.job_bar import describe_progress
from pipeline.errors import ChatError, PipelineError
from pipeline.inference.chat import ChatSession, ContextTrimmed, ReplyDone, TextDelta

if TYPE_CHECKING:
    from textual.app import ComposeResult
    from textual.widget import Widget
    from textual.widgets import Markdown
    from textual.widgets.markdown import MarkdownStream

    from pipeline.inference.chat import Backend, ReplyStats
    from pipeline.inference.targets import ChatTarget, OpenOptions
    from pipeline.workspace import Workspace

SLOT_A, SLOT_B = "a", "b"
TICK_SECONDS = 0.5

CHAT_BINDINGS: list[BindingType] = [
    Binding("escape", "stop", "Stop", tooltip="Stop the reply (both in compare mode) or a load"),
    Binding("escape", "leave_input", "Leave the input", show=False),
    Binding("f2", "pick", "Model", tooltip="Pick what to talk to"),
    Binding(
        "f3", "compare", "Compare", tooltip="A second model beside the first (again: change or end)"
    ),
    Binding(
        "f4", "settings", "Settings", tooltip="System prompt, sampling, context, device, runtime"
    ),
    Binding(
        "ctrl+s",
        "save",
        "Save",
        key_display="^s",
        tooltip="Append the conversation to a ShareGPT JSONL file (training data)",
    ),
    Binding("ctrl+n", "new_conversation", "New", key_display="^n", tooltip="New conversation"),
    Binding(
        "ctrl+z",
        "undo",
        "Undo",
        key_display="^z",
        tooltip="Forget the last exchange; its message goes back into the input",
    ),
    Binding("pageup", "scroll_log(-1)", "Scroll the conversation up", show=False),
    Binding("pagedown", "scroll_log(1)", "Scroll the conversation down", show=False),
]


@dataclass(eq=False)
class Slot:
    """One side of the chat: what it talks to and the conversation (module docstring)."""

    name: str
    target: ChatTarget | None = None
    backend: Backend | None = None
    session: ChatSession | None = None
    state: str = "empty"
    """empty, loading, ready, generating or failed (the last load failed)."""
    job: int = 0
    """The load whose messages count; older ones are ignored."""
    reply_job: int = 0
    """The reply whose messages count (0: none is being written)."""
    stop: threading.Event = field(default_factory=threading.Event)
    """The running job's stop flag."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held by the thread that uses the backend."""
    opened_with: tuple[object, ...] | None = None
    """The settings' ``open_key`` the backend was opened with."""
    opening: str = ""
    """What is being opened, as typed or listed (for the model line while it loads)."""
    keep_session: bool = False
    """The load in progress replaces the backend of the conversation (a reload)."""
    started: float = 0.0
    """When the running job began (monotonic)."""
    load_steps: list[str] = field(default_factory=list)
    load_detail: str = ""
    # the reply in progress
    sent: str = ""
    """The message being answered."""
    reply: Markdown | None = None
    stream: MarkdownStream | None = None
    pending: list[Widget] = field(default_factory=list)
    live: ReplyStreamed | None = None
    # the log entries of each exchange in the conversation, for undo
    exchanges: list[list[Widget]] = field(default_factory=list)
    last_stats: ReplyStats | None = None

    @property
    def busy(self) -> bool:
        return self.state in ("loading", "generating")


class ChatScreen(Screen[None]):
    """See the module docstring."""

    CSS_PATH = Path(__file__).with_name("chat.tcss")
    BINDINGS: ClassVar[list[BindingType]] = CHAT_BINDINGS
    AUTO_FOCUS = "#chat-input"

    # ---- what the workers post

    class Listed(Message):
        def __init__(self, targets: list[ChatTarget], slot: str, error: str | None) -> None:
            super().__init__()
            self.targets = targets
            self.slot = slot
            self.error = error

    class Resolved(Message):
        def __init__(self, slot: str, job_id: int, target: ChatTarget) -> None:
            super().__init__()
            self.slot = slot
            self.job_id = job_id
            self.target = target

    class Loaded(Message):
        def __init__(self, slot: str, job_id: int, backend: Backend, seconds: float) -> None:
            super().__init__()
            self.slot = slot
            self.job_id = job_id
            self.backend = backend
            self.seconds = seconds

    class LoadFailed(Message):
        def __init__(self, slot: str, job_id: int, error: BaseException) -> None:
            super().__init__()
            self.slot = slot
            self.job_id = job_id
            self.error = error

    class ReplyTrimmed(Message):
        def __init__(self, slot: str, job_id: int, notice: str) -> None:
            super().__init__()
            self.slot = slot
            self.job_id = job_id
            self.notice = notice

    class ReplyFinished(Message):
        def __init__(self, slot: str, job_id: int, done: ReplyDone) -> None:
            super().__init__()
            self.slot = slot
            self.job_id = job_id
            self.done = done

    class ReplyFailed(Message):
        def __init__(self, slot: str, job_id: int, error: BaseException) -> None:
            super().__init__()
            self.slot = slot
            self.job_id = job_id
            self.error = error

    def __init__(self) -> None:
        super().__init__()
        self.slots = {SLOT_A: Slot(SLOT_A), SLOT_B: Slot(SLOT_B)}
        self.compare = False
        self.settings = ChatSettings()
        self.queued: str | None = None
        """A message typed while a reply was written: sent when the replies end."""
        self.listed = 0
        """How many target listings arrived (tests wait for the next one)."""
        self.dispatched = 0
        """How many messages went out to the models (tests wait for the next one)."""
        self.last_save: Path | None = None
        """Where the conversation was last saved: the next save appends there by default."""
        self._jobs = 0
        self._load_jobs: dict[int, str] = {}
        self._listing = False

    # ---- layout

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        with Horizontal(id="chat-panes"):
            yield ChatPane(SLOT_A, id="pane-a")
            yield ChatPane(SLOT_B, id="pane-b")
        yield Static(id="chat-queue")
        yield Input(placeholder="Type a message; enter sends it", id="chat-input")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "Chat"
        self.pane(SLOT_B).display = False
        self.query_one("#chat-queue", Static).display = False
        for name in self.slots:
            self._show_model(self.slots[name])
            self._show_state(self.slots[name])
        self._show_subtitle()
        self.set_interval(TICK_SECONDS, self._tick)

    def pane(self, slot: str) -> ChatPane:
        return self.query_one(f"#pane-{slot}", ChatPane)

    @property
    def input(self) -> Input:
        return self.query_one("#chat-input", Input)

    def active(self) -> list[Slot]:
        """The slots shown: A, and B in compare mode."""
        return [self.slots[SLOT_A], self.slots[SLOT_B]] if self.compare else [self.slots[SLOT_A]]

    @property
    def busy(self) -> bool:
        """A model loads or a reply is being written."""
        return any(slot.busy for slot in self.slots.values())

    @property
    def generating(self) -> bool:
        return any(slot.state == "generating" for slot in self.slots.values())

    def help_sections(self) -> list[HelpSection]:
        return [
            ("Chat", describe_bindings(self.app, self.BINDINGS)),
            (
                "Chat input",
                [
                    ("enter", "Send the message (to both models in compare mode); while a "
                     "reply is written it waits, queued, until the reply ends"),
                    ("esc", "Stop the replies and take back a queued message; when nothing "
                     "runs, leave the input (then 1-5 switch screens, typing comes back)"),
                    ("tab", "Focus the conversation (↑ ↓ scroll it)"),
                    ("pgup pgdn", "Scroll the conversation"),
                ],
            ),
        ]  # fmt: skip

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.busy or self.queued is not None
        if action == "leave_input":
            return isinstance(self.focused, Input)
        if action in ("save", "undo", "new_conversation"):
            return None if self.generating else True
        return True

    # ---- the lines around the panes

    def _show_model(self, slot: Slot) -> None:
        """Two lines: what the pane talks to, and how it runs (or its detail while loading)."""
        text = Text(no_wrap=True, overflow="ellipsis")
        if self.compare:
            text.append(f" {slot.name.upper()} ", style="bold reverse")
            text.append(" ")
        if slot.target is not None:
            text.append(slot.target.label, style="bold")
            if slot.backend is not None:
                text.append(
                    f"\n{slot.backend.label} · context {slot.backend.context_length}",
                    style="dim",
                )
            else:
                text.append(f"\n{slot.target.detail}", style="dim")
        elif slot.state == "loading":
            text.append(slot.opening, style="bold")
            text.append("\nlooking it up…", style="dim")
        else:
            text.append("No model: ", style="bold yellow")
            key = "F3" if slot.name == SLOT_B else "F2"
            text.append(f"{key} picks one", style="yellow")
        self.pane(slot.name).set_model(text)

    def _show_state(self, slot: Slot) -> None:
        pane = self.pane(slot.name)
        elapsed = time.monotonic() - slot.started
        if slot.state == "loading":
            text = Text(f"loading… {elapsed:.0f} s", style="bold cyan")
            if slot.load_steps:
                text.append(" · " + " · ".join(slot.load_steps), style="cyan")
            if slot.load_detail:
                text.append(f" · {slot.load_detail}", style="dim")
            if slot.stop.is_set():
                text.append(" · cancelling…", style="yellow")
            pane.set_state(text)
        elif slot.state == "generating":
            live = slot.live
            if live is None:
                text = live_text(0, None, elapsed)
            else:
                text = live_text(live.pieces, live.first_s, max(live.elapsed_s, elapsed))
            if slot.stop.is_set():
                text.append(" · stopping…", style="yellow")
            pane.set_state(text)
        elif slot.state == "ready":
            if slot.last_stats is not None:
                text = Text("last reply: ", style="dim")
                text.append_text(stats_text(slot.last_stats))
            else:
                text = Text("ready", style="green")
                if slot.session is not None:
                    text.append(f" · {slot.session.sampling.describe()}", style="dim")
            pane.set_state(text)
        elif slot.state == "failed":
            pane.set_state(Text(f"not loaded: {slot.load_detail}", style="red"))
        else:
            pane.set_state(Text("", style="dim"))

    def _show_subtitle(self) -> None:
        parts = [self.settings.sampling.describe()]
        if self.settings.system:
            parts.append("system prompt set")
        if self.compare:
            parts.insert(0, "compare")
        self.sub_title = " · ".join(parts)

    def _show_queue(self) -> None:
        line = self.query_one("#chat-queue", Static)
        if self.queued is None:
            line.display = False
            return
        text = Text("queued: ", style="bold yellow")
        text.append(_cut(self.queued, 60))
        text.append("  (sent when the reply ends; esc stops it and takes this back)", "dim")
        line.update(text)
        line.display = True

    def _tick(self) -> None:
        for slot in self.slots.values():
            if slot.busy:
                self._show_state(slot)

    # ---- picking and loading

    def action_pick(self) -> None:
        self._list_targets(SLOT_A)

    def action_compare(self) -> None:
        self._list_targets(SLOT_B)

    def _list_targets(self, slot: str) -> None:
        if self._listing:
            return
        self._listing = True
        self._lister(slot)

    @work(thread=True, exit_on_error=False, group="chat-list")
    def _lister(self, slot: str) -> None:
        from pipeline.inference.targets import list_targets

        try:
            targets, error = list_targets(self._workspace()), None
        except Exception as exc:  # a run or export that cannot be read: offer the rest
            from pipeline.inference.targets import default_target

            message = exc.message if isinstance(exc, PipelineError) else f"{exc}"
            targets, error = [default_target()], message
        self.post_message(self.Listed(targets, slot, error))

    @on(Listed)
    def _listed(self, message: Listed) -> None:
        self._listing = False
        self.listed += 1
        if self.app.screen is not self:  # the user went elsewhere meanwhile
            return
        if message.error:
            self.notify(
                f"Some runs or exports could not be read: {message.error}", severity="warning"
            )
        slot = self.slots[message.slot]
        b = message.slot == SLOT_B
        title = "Talk to…"
        if b:
            title = "Compare with…" if not self.compare else "The second model (B)…"
        elif self.compare:
            title = "The first model (A)…"
        picker = TargetPickerModal(
            message.targets,
            title=title,
            current=slot.target.ref if slot.target is not None else None,
            can_end_compare=b and self.compare,
        )

        def picked(pick: Pick | None) -> None:
            if pick is None:
                return
            if pick.end_compare:
                self.end_compare()
            elif pick.target is not None:
                self.open_target(pick.target, message.slot)
            elif pick.ref is not None:
                self.open_ref(pick.ref, message.slot)

        self.app.push_screen(picker, picked)

    def open_ref(self, ref: str, slot: str = SLOT_A) -> None:
        """Resolve ``ref`` (what ``gemma-tui chat`` takes) and load it into ``slot``."""
        self._start_load(slot, ref)

    def open_target(self, target: ChatTarget, slot: str = SLOT_A) -> None:
        """Load ``target`` into ``slot`` (B turns compare mode on)."""
        self._start_load(slot, target)

    def _start_load(self, name: str, what: ChatTarget | str, *, keep_session: bool = False) -> None:
        slot = self.slots[name]
        if name == SLOT_B and not self.compare:
            self.compare = True
            self.pane(SLOT_B).display = True
            self._show_model(self.slots[SLOT_A])
            self._show_subtitle()
        slot.stop.set()  # a reply or a load still running for this slot stops
        if slot.state == "generating" and not keep_session:
            self._abandon_reply(slot)  # its conversation goes with the old model
        slot.target = None if isinstance(what, str) else what  # a name: once resolved
        slot.opening = what if isinstance(what, str) else what.label
        old, slot.backend = slot.backend, None
        self._jobs += 1
        slot.job = self._jobs
        slot.stop = threading.Event()
        slot.state = "loading"
        slot.keep_session = keep_session and slot.session is not None
        slot.started = time.monotonic()
        slot.load_steps, slot.load_detail = [], ""
        slot.live = None
        if not slot.keep_session:
            slot.session = None
            slot.exchanges.clear()
            slot.last_stats = None
        self._load_jobs[slot.job] = name
        pane = self.pane(name)
        if not slot.keep_session:
            pane.clear()
        pane.add_notice(f"Opening {slot.opening} ({self.settings.describe_open()})…")
        self._show_model(slot)
        self._show_state(slot)
        self.refresh_bindings()
        self._loader(name, slot.job, what, self.settings.open_options(), slot.stop, old)

    @work(thread=True, exit_on_error=False, group="chat-load")
    def _loader(
        self,
        name: str,
        job_id: int,
        what: ChatTarget | str,
        options: OpenOptions,
        stop: threading.Event,
        old: Backend | None,
    ) -> None:
        from pipeline.inference.targets import open_target, resolve_target

        worker = get_current_worker()
        slot = self.slots[name]
        bridge = EventBridge(self.post_message, job_id)
        try:
            with slot.lock:  # a reply of the old backend ends first (it was told to stop)
                if old is not None:
                    _close_quietly(old)
                workspace = self._workspace()
                target = resolve_target(what, workspace) if isinstance(what, str) else what
                if isinstance(what, str):
                    self.post_message(self.Resolved(name, job_id, target))
                started = time.monotonic()
                backend = open_target(
                    target,
                    options,
                    workspace=workspace,
                    on_event=bridge,
                    should_stop=lambda: stop.is_set() or worker.is_cancelled,
                )
            self.post_message(self.Loaded(name, job_id, backend, time.monotonic() - started))
        except Exception as exc:  # shown in the pane; the screen stays usable
            self.post_message(self.LoadFailed(name, job_id, exc))
        finally:
            bridge.close()

    def _load_slot(self, job_id: int) -> Slot | None:
        name = self._load_jobs.get(job_id)
        if name is None:
            return None
        slot = self.slots[name]
        return slot if slot.job == job_id and slot.state == "loading" else None

    @on(Resolved)
    def _resolved(self, message: Resolved) -> None:
        slot = self._load_slot(message.job_id)
        if slot is not None:
            slot.target = message.target
            self._show_model(slot)

    @on(JobProgressed)
    def _load_progressed(self, message: JobProgressed) -> None:
        slot = self._load_slot(message.job_id)
        if slot is not None:
            slot.load_detail = describe_progress(message.progress)
            self._show_state(slot)

    @on(JobEventsBatched)
    def _load_events(self, message: JobEventsBatched) -> None:
        from pipeline.events import LogLine

        slot = self._load_slot(message.job_id)
        if slot is None:
            return
        for event in message.events:
            if isinstance(event, LogLine):
                slot.load_detail = event.message
                if event.level in ("warning", "error"):
                    self.pane(slot.name).add_notice(event.message, style="yellow")
        self._show_state(slot)

    @on(JobMilestoneReached)
    def _load_milestone(self, message: JobMilestoneReached) -> None:
        slot = self._load_slot(message.job_id)
        if slot is not None:
            event = message.event
            slot.load_steps.append(f"{event.stage} ✓ {event.seconds:.1f} s")
            slot.load_detail = ""
            self._show_state(slot)

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        self._load_jobs.pop(message.job_id, None)
        slot = self.slots[message.slot]
        if slot.job != message.job_id or slot.state != "loading":
            self._close_later(slot, message.backend)  # replaced or ended meanwhile
            return
        backend = message.backend
        slot.backend = backend
        slot.state = "ready"
        slot.opened_with = self.settings.open_key()
        pane = self.pane(slot.name)
        if slot.keep_session and slot.session is not None:
            slot.session.backend = backend
            pane.add_notice(
                f"Reloaded in {message.seconds:.1f} s: {backend.label}, context "
                f"{backend.context_length} tokens. The conversation goes on."
            )
        else:
            slot.session = ChatSession(
                backend,
                system=self.settings.system,
                sampling=self.settings.sampling,
            )
            pane.clear()
            note = (
                f"Loaded in {message.seconds:.1f} s: {backend.label}, context "
                f"{backend.context_length} tokens. New conversation."
            )
            other = self.slots[SLOT_A]
            if slot.name == SLOT_B and other.session is not None and other.session.history:
                note += " A keeps its history; ctrl+n starts both afresh."
            pane.add_notice(note)
        slot.keep_session = False
        self._show_model(slot)
        self._show_state(slot)
        self.refresh_bindings()
        self._send_queued()

    @on(LoadFailed)
    def _load_failed(self, message: LoadFailed) -> None:
        from pipeline.errors import JobCancelled

        self._load_jobs.pop(message.job_id, None)
        slot = self.slots[message.slot]
        if slot.job != message.job_id or slot.state != "loading":
            return
        error = message.error
        pane = self.pane(slot.name)
        slot.state = "failed"
        if isinstance(error, JobCancelled) or slot.stop.is_set():
            slot.load_detail = "loading was cancelled (F2 picks a model again)"
            pane.add_notice("Loading cancelled.", style="yellow")
        else:
            slot.load_detail = "the error is in the log above"
            _show_error(pane, error)
        slot.session = None
        slot.keep_session = False
        self._show_model(slot)
        self._show_state(slot)
        self.refresh_bindings()
        if self.queued is not None and not any(s.busy for s in self.active()):
            self._send_queued()

    def end_compare(self) -> None:
        """Back to one pane: B's reply stops, its model is closed."""
        slot = self.slots[SLOT_B]
        slot.stop.set()
        self._abandon_reply(slot)
        if slot.backend is not None:
            self._close_later(slot, slot.backend)
        self.slots[SLOT_B] = Slot(SLOT_B)
        self.compare = False
        pane = self.pane(SLOT_B)
        pane.display = False
        pane.show_welcome()
        self._show_model(self.slots[SLOT_A])
        self._show_model(self.slots[SLOT_B])
        self._show_state(self.slots[SLOT_B])
        self._show_subtitle()
        self.refresh_bindings()

    # ---- talking

    @on(Input.Submitted, "#chat-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.send(event.value)

    def send(self, text: str) -> None:
        """Send ``text`` to every loaded pane, or queue it while a reply is written."""
        if not text.strip():
            self.notify("Type a message first.", severity="warning")
            return
        slots = self.active()
        if not any(s.session is not None or s.state == "loading" for s in slots):
            self.notify("Pick a model first: F2.", title="No model", severity="warning")
            return
        if any(s.busy for s in slots):
            if self.queued is not None:
                self.notify(
                    "A message is already queued; it is sent when the reply ends (esc stops "
                    "the reply and takes it back).",
                    title="Reply in progress",
                    severity="warning",
                )
                return
            self.queued = text
            self.input.value = ""
            self._show_queue()
            self.refresh_bindings()
            return
        self.input.value = ""
        self._dispatch(text)

    def _send_queued(self) -> None:
        if self.queued is None or any(s.busy for s in self.active()):
            return
        text, self.queued = self.queued, None
        self._show_queue()
        if any(s.session is not None for s in self.active()):
            self._dispatch(text)
        else:
            self._restore_input(text)

    def _dispatch(self, text: str) -> None:
        self.dispatched += 1
        for slot in self.active():
            pane = self.pane(slot.name)
            if slot.session is None:
                pane.add_notice("Not sent: no model here (F2 / F3 picks one).", style="yellow")
                continue
            self._jobs += 1
            slot.reply_job = self._jobs
            slot.stop = threading.Event()
            slot.state = "generating"
            slot.started = time.monotonic()
            slot.live = None
            slot.pending = [pane.add_user(text)]
            slot.sent = text
            slot.reply = None
            slot.stream = None
            self._show_state(slot)
            self._replier(slot.name, slot.reply_job, slot.session, text, slot.stop)
        self.refresh_bindings()

    @work(thread=True, exit_on_error=False, group="chat-reply")
    def _replier(
        self, name: str, job_id: int, session: ChatSession, text: str, stop: threading.Event
    ) -> None:
        worker = get_current_worker()
        slot = self.slots[name]
        batcher = DeltaBatcher(self.post_message, name, job_id)
        try:
            with slot.lock:
                for event in session.stream(
                    text, should_stop=lambda: stop.is_set() or worker.is_cancelled
                ):
                    if isinstance(event, TextDelta):
                        batcher.add(event.text)
                    elif isinstance(event, ContextTrimmed):
                        batcher.flush()
                        self.post_message(self.ReplyTrimmed(name, job_id, event.describe()))
                    elif isinstance(event, ReplyDone):
                        batcher.flush()
                        self.post_message(self.ReplyFinished(name, job_id, event))
        except Exception as exc:  # shown in the pane; the conversation is unchanged
            batcher.flush()
            self.post_message(self.ReplyFailed(name, job_id, exc))

    def _reply_slot(self, name: str, job_id: int) -> Slot | None:
        slot = self.slots[name]
        return slot if slot.reply_job == job_id else None

    @on(ReplyStreamed)
    async def _streamed(self, message: ReplyStreamed) -> None:
        slot = self._reply_slot(message.slot, message.job_id)
        if slot is None:
            return
        if slot.reply is None:
            from textual.widgets import Markdown

            slot.reply = self.pane(slot.name).start_reply()
            slot.pending.append(slot.reply)
            slot.stream = Markdown.get_stream(slot.reply)
        slot.live = message
        assert slot.stream is not None
        await slot.stream.write(message.text)
        self._show_state(slot)

    @on(ReplyTrimmed)
    def _trimmed(self, message: ReplyTrimmed) -> None:
        slot = self._reply_slot(message.slot, message.job_id)
        if slot is not None:
            notice = self.pane(slot.name).add_notice(message.notice, style="yellow")
            slot.pending.append(notice)

    async def _end_stream(self, slot: Slot, text: str | None) -> None:
        if slot.stream is not None:
            await slot.stream.stop()
            slot.stream = None
        if slot.reply is not None and text is not None and slot.reply.source != text:
            await slot.reply.update(text)

    @on(ReplyFinished)
    async def _finished(self, message: ReplyFinished) -> None:
        slot = self._reply_slot(message.slot, message.job_id)
        if slot is None:
            return
        done = message.done
        pane = self.pane(slot.name)
        if slot.reply is None and done.text:
            slot.reply = pane.start_reply()
            slot.pending.append(slot.reply)
        await self._end_stream(slot, done.text)
        if not done.text:
            slot.pending.append(pane.add_notice("(no text: the reply was empty)"))
        if slot.reply is not None:
            slot.reply.set_class(done.stats.stop_reason == "stopped", "-stopped")
        slot.pending.append(pane.add_stats(done.stats))
        slot.exchanges.append(slot.pending)
        slot.pending, slot.reply = [], None
        slot.last_stats = done.stats
        self._reply_ended(slot)

    @on(ReplyFailed)
    async def _failed(self, message: ReplyFailed) -> None:
        slot = self._reply_slot(message.slot, message.job_id)
        if slot is None:
            return
        await self._end_stream(slot, None)
        if slot.reply is not None:
            slot.reply.add_class("-failed")
        _show_error(self.pane(slot.name), message.error, kept=slot.reply is not None)
        if slot.reply is None and slot.sent and not self.input.value.strip():
            # refused before any reply (too long, a failed model): back to the input to edit
            self.input.value = slot.sent
            self.input.cursor_position = len(slot.sent)
        slot.pending, slot.reply = [], None
        self._reply_ended(slot)

    def _abandon_reply(self, slot: Slot) -> None:
        """Forget the reply being written (its pane is cleared or closed): its messages are
        ignored from now on."""
        slot.reply_job = 0
        stream, slot.stream = slot.stream, None
        if stream is not None:
            self.call_later(stream.stop)
        slot.reply, slot.pending, slot.live = None, [], None

    def _reply_ended(self, slot: Slot) -> None:
        slot.reply_job = 0
        if slot.state == "generating":  # (a reload may have begun meanwhile)
            slot.state = "ready" if slot.backend is not None else "failed"
        slot.live = None
        self._show_state(slot)
        self.refresh_bindings()
        self._send_queued()

    # ---- keys

    def action_stop(self) -> None:
        """Stop every reply and load; take a queued message back into the input."""
        stopped = False
        for slot in self.slots.values():
            if slot.busy:
                slot.stop.set()
                stopped = True
                self._show_state(slot)
        if self.queued is not None:
            text, self.queued = self.queued, None
            self._show_queue()
            self._restore_input(text)
        if stopped and not self.busy:
            self.refresh_bindings()

    def _restore_input(self, text: str) -> None:
        field = self.input
        if field.value.strip():
            self.notify(f"Not sent (the input is in use): {_cut(text, 80)}", severity="warning")
            return
        field.value = text
        field.cursor_position = len(text)

    def action_leave_input(self) -> None:
        self.pane(SLOT_A).log_view.focus()

    def on_key(self, event: events.Key) -> None:
        # typing while the conversation has the focus goes to the input
        if isinstance(self.focused, Input) or not event.is_printable or event.character is None:
            return
        if event.key in self.active_bindings:
            return
        field = self.input
        field.focus()
        field.insert_text_at_cursor(event.character)
        event.stop()
        event.prevent_default()

    def action_scroll_log(self, pages: int) -> None:
        for slot in self.active():
            self.pane(slot.name).scroll_page(pages)

    def action_settings(self) -> None:
        loaded = any(s.backend is not None or s.state == "loading" for s in self.active())

        def chosen(settings: ChatSettings | None) -> None:
            if settings is not None:
                self.apply_settings(settings)

        self.app.push_screen(ChatSettingsModal(self.settings, loaded=loaded), chosen)

    def apply_settings(self, settings: ChatSettings) -> None:
        """Use ``settings``: sampling and system prompt at once, the rest by reloading."""
        old, self.settings = self.settings, settings
        changed_sampling = settings.sampling != old.sampling
        for slot in self.active():
            if slot.session is None:
                continue
            if changed_sampling:
                slot.session.sampling = settings.sampling
            if settings.system != old.system:
                slot.session.system = settings.system
                self.pane(slot.name).add_notice(
                    "System prompt "
                    + ("removed" if not settings.system else "changed")
                    + ": it applies from the next message."
                )
        self._show_subtitle()
        if settings.open_key() != old.open_key():
            for slot in self.active():
                if slot.target is not None and (slot.backend is not None or slot.busy):
                    self._start_load(slot.name, slot.target, keep_session=True)
        for slot in self.active():
            self._show_state(slot)

    def action_new_conversation(self) -> None:
        if self.generating:
            self.notify("A reply is being written: esc stops it first.", severity="warning")
            return
        for slot in self.active():
            pane = self.pane(slot.name)
            if slot.session is None:
                continue
            slot.session.reset()
            slot.exchanges.clear()
            slot.last_stats = None
            pane.clear()
            pane.add_notice(
                "New conversation (the system prompt and the settings stay; "
                + (slot.backend.label if slot.backend is not None else "no model")
                + ")."
            )
            self._show_state(slot)

    def action_undo(self) -> None:
        if self.generating:
            self.notify("A reply is being written: esc stops it first.", severity="warning")
            return
        message = None
        for slot in self.active():
            if slot.session is None:
                continue
            exchange = slot.session.undo()
            if exchange is None:
                continue
            message = exchange.user
            if slot.exchanges:
                for widget in slot.exchanges.pop():
                    widget.remove()
            slot.last_stats = None
            self._show_state(slot)
        if message is None:
            self.notify("Nothing to undo.", severity="warning")
            return
        if not self.input.value.strip():
            self.input.value = message
            self.input.cursor_position = len(message)

    def action_save(self) -> None:
        if self.generating:
            self.notify("A reply is being written: esc stops it first.", severity="warning")
            return
        slots = [s for s in self.active() if s.session is not None and s.session.history]
        if not slots:
            self.notify("Nothing to save yet: send a message first.", severity="warning")
            return
        chats = self._workspace().root / "chats"
        default = self.last_save or default_save_path(chats, slots[0].target, datetime.now())
        options: list[str] = []
        if len(slots) > 1:
            options = [*(f"{s.name.upper()}: {_target_name(s)}" for s in slots), "both"]

        def chosen(choice: OutputChoice | None) -> None:
            if choice is None:
                return
            if choice.option is None or choice.option == "both":
                picked = slots
            else:
                picked = [s for s in slots if choice.option.startswith(s.name.upper() + ":")]
            self.save(choice.paths[0], picked)

        self.app.push_screen(
            OutputPathsModal(
                "Save the conversation",
                [OutputField("Append it to (ShareGPT JSONL, one line per conversation)", default)],
                options=options,
                option_label="Which conversation (both: one line each)",
                action="Save",
                note="The file is appended to, so it can collect good conversations; open it "
                "on the Dataset screen (1) to check or train on them.",
            ),
            chosen,
        )

    def save(self, path: Path, slots: list[Slot]) -> Path | None:
        """Append the conversations of ``slots`` to ``path``; say where it went."""
        from pipeline.data import display_path

        written: Path | None = None
        turns = 0
        for slot in slots:
            session = slot.session
            if session is None or not session.history:
                continue
            try:
                written = session.save_jsonl(path, append=True)
            except ChatError as error:
                _show_error(self.pane(slot.name), error)
                self.notify(error.message, title="Not saved", severity="error")
                return None
            turns += len(session.transcript().turns)
        if written is None:
            return None
        self.last_save = written
        where = display_path(written.resolve())
        lines = f"{len(slots)} conversations" if len(slots) > 1 else "the conversation"
        for slot in slots:
            self.pane(slot.name).add_notice(
                f"Saved: appended {lines} ({turns} turns) to {where}.", style="green"
            )
        self.notify(f"Appended to {where}", title="Conversation saved")
        return written

    # ---- leaving

    def on_screen_suspend(self) -> None:
        # A dialog over this screen (help, settings) leaves the replies going; another mode
        # stops them (the models stay loaded, so coming back is instant).
        self.call_after_refresh(self._stop_if_left)

    def _stop_if_left(self) -> None:
        if self in self.app.screen_stack:
            return
        for slot in self.slots.values():
            if slot.state == "generating":
                slot.stop.set()
                self._show_state(slot)
        if self.queued is not None:
            text, self.queued = self.queued, None
            self._show_queue()
            self._restore_input(text)

    def on_unmount(self) -> None:
        """The screen goes away (the app quits): stop everything, close every backend."""
        for slot in self.slots.values():
            slot.stop.set()
            if slot.backend is not None:
                backend, slot.backend = slot.backend, None
                self._close_later(slot, backend)

    def _close_later(self, slot: Slot, backend: Backend) -> None:
        """Close ``backend`` once no thread uses it (now, when none does)."""
        lock = slot.lock
        if lock.acquire(blocking=False):
            try:
                _close_quietly(backend)
            finally:
                lock.release()
            return

        def close() -> None:
            with lock:
                _close_quietly(backend)

        threading.Thread(target=close, name="chat-close", daemon=True).start()

    # ---- helpers

    def _workspace(self) -> Workspace:
        from pipeline.workspace import Workspace

        return Workspace.default()


def _close_quietly(backend: Backend) -> None:
    with contextlib.suppress(Exception):
        backend.close()


def _show_error(pane: ChatPane, error: BaseException, *, kept: bool = False) -> None:
    if isinstance(error, PipelineError):
        message = error.message
        if kept:
            message += " (the partial reply above is not part of the conversation)"
        pane.add_error(error.title, message, error.hint)
    else:
        pane.add_error(
            "Unexpected error",
            f"{type(error).__name__}: {error}",
            "This is a bug in gemma-tui or a library it uses; the conversation is unchanged.",
        )


def _cut(text: str, width: int) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def _target_name(slot: Slot) -> str:
    return slot.target.label if slot.target is not None else "?"
