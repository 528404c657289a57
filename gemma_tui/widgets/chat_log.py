"""One side of the Chat screen: the model line, the conversation, and the stats line.

A :class:`ChatPane` shows what it talks to on top (the model's label, or what to press to pick
one), the conversation in a scrolling log that follows the newest text (until the user scrolls
up), and one status line under it: loading progress, "generating… N tokens · X tok/s", or the
last reply's numbers. The log holds one widget per entry: the user's messages, the model's
replies (Markdown, appended to as the text streams in), notices (a trimmed context, a saved
transcript), errors (red, with the hint) and each reply's stats. The screen drives it; the
pane never talks to a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static

if TYPE_CHECKING:
    from textual.app import ComposeResult
    from textual.widget import Widget

    from pipeline.inference.chat import ReplyStats


WELCOME = (
    "F2 picks what to talk to: the embedded Gemma 3 270M, a checkpoint of any run, or an "
    "export (.task, .litertlm, .tflite); or type a name there (tiny, a .gguf, my-run@200).\n"
    "F3 adds a second model beside this one: each message then goes to both.\n"
    "F4 sets the system prompt, the sampling, the context, the device.\n"
    "Replies stream here; esc stops one; ctrl+s appends the conversation to a ShareGPT JSONL "
    "file the Dataset screen reads."
)


def stats_text(stats: ReplyStats) -> Text:
    """A reply's numbers, yellow when it did not end by itself."""
    style = "dim" if stats.stop_reason == "stop_token" else "yellow"
    return Text(stats.describe(), style=style)


def live_text(pieces: int, first_s: float | None, elapsed_s: float) -> Text:
    """The status while a reply streams: its tokens so far, first-token time and rate."""
    text = Text("generating… ", style="bold cyan")
    if first_s is None:
        text.append(f"reading the prompt · {elapsed_s:.1f} s", style="cyan")
        return text
    text.append(f"{pieces} tokens · first token {first_s:.2f} s", style="cyan")
    span = elapsed_s - first_s
    if pieces > 1 and span > 0:
        text.append(f" · {(pieces - 1) / span:.1f} tok/s", style="cyan")
    return text


class ChatLog(VerticalScroll, can_focus=True):
    """The scrolling conversation (focusable, so it scrolls with the keys too)."""


class ChatPane(Vertical):
    """See the module docstring. ``slot`` names the side ("a" left, "b" right)."""

    def __init__(self, slot: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="chat-pane")
        self.slot = slot

    def compose(self) -> ComposeResult:
        yield Static(id=f"model-{self.slot}", classes="pane-model")
        yield ChatLog(id=f"log-{self.slot}", classes="pane-log")
        yield Static(id=f"state-{self.slot}", classes="pane-state")

    def on_mount(self) -> None:
        self.log_view.anchor()
        self.show_welcome()

    @property
    def log_view(self) -> ChatLog:
        return self.query_one(ChatLog)

    # ---- the lines above and below the log

    def set_model(self, text: Text) -> None:
        self.query_one(".pane-model", Static).update(text)

    def set_state(self, text: Text | str) -> None:
        self.query_one(".pane-state", Static).update(text)

    def state_text(self) -> str:
        """What the status line shows, as plain text (for tests)."""
        content = self.query_one(".pane-state", Static).content
        return content.plain if isinstance(content, Text) else str(content)

    # ---- the log

    def show_welcome(self) -> None:
        self.clear()
        self._mount(Static(Text(WELCOME, style="dim"), classes="msg-welcome"))

    def clear(self) -> None:
        self.log_view.remove_children()

    def _mount(self, widget: Widget) -> Widget:
        self.log_view.query(".msg-welcome").remove()
        self.log_view.mount(widget)
        return widget

    def add_user(self, text: str) -> Widget:
        body = Text("you  ", style="bold cyan")
        body.append(text)
        return self._mount(Static(body, classes="msg-user"))

    def start_reply(self) -> Markdown:
        reply = Markdown(classes="msg-reply")
        self._mount(reply)
        return reply

    def add_notice(self, text: str, *, style: str = "dim italic") -> Widget:
        return self._mount(Static(Text(text, style=style), classes="msg-notice"))

    def add_stats(self, stats: ReplyStats) -> Widget:
        return self._mount(Static(stats_text(stats), classes="msg-stats"))

    def add_error(self, title: str, message: str, hint: str | None = None) -> Widget:
        text = Text(f"✗ {title}: ", style="bold red")
        text.append(message, style="red")
        if hint:
            text.append(f"\nHint: {hint}", style="yellow")
        return self._mount(Static(text, classes="msg-error"))

    def entries(self) -> list[Widget]:
        return list(self.log_view.children)

    def scroll_page(self, pages: int) -> None:
        log = self.log_view
        if pages < 0:
            log.scroll_page_up(animate=False)
        else:
            log.scroll_page_down(animate=False)
