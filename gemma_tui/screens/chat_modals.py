"""The Chat screen's dialogs: what to talk to (F2, F3), and the settings (F4).

:class:`TargetPickerModal` lists what :func:`pipeline.inference.targets.list_targets` found
(the embedded model, each run's checkpoints, each export's bundles; damaged ones greyed with
their problem and not selectable) and takes a typed name too (``tiny``, ``my-run@200``, a
``.gguf``, a ``.task``: anything ``gemma-tui chat`` takes). :class:`ChatSettingsModal` edits
:class:`ChatSettings`: the system prompt, the sampling, and how a model is opened; every change
is checked at once by :func:`parse_chat_settings` (the pipeline's
:func:`~pipeline.inference.chat.check_sampling` words) and the problems shown in place.

Modals only collect an answer and ``dismiss`` it; the screen loads and talks (its workers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from pipeline.errors import ChatError
from pipeline.inference.chat import Sampling, check_sampling

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.inference.targets import ChatTarget, OpenOptions

DEVICES = ("auto", "cpu", "gpu")
RUNTIMES = ("auto", "litert_lm", "interpreter")
MIN_CONTEXT = 64
KIND_TAGS = {"base": "model", "checkpoint": "LoRA", "bundle": "export"}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ChatSettings:
    """What the settings dialog sets: the conversation's system prompt and sampling (they
    apply to the next message), and how models are opened (they apply when one is loaded;
    changing them reloads the loaded models, keeping the conversation)."""

    system: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    context: int | None = None
    """Tokens of prompt + reply; None: 2048 for Keras, a bundle's own KV-cache length."""
    device: str = "auto"
    merge: bool = False
    runtime: str | None = None

    def open_options(self) -> OpenOptions:
        from pipeline.inference.targets import OpenOptions

        return OpenOptions(
            device=self.device,
            context_length=self.context,
            merge=self.merge,
            runtime=self.runtime,  # type: ignore[arg-type]
        )

    def open_key(self) -> tuple[object, ...]:
        """What a loaded model depends on: a change means a reload."""
        return (self.context, self.device, self.merge, self.runtime)

    def describe_open(self) -> str:
        parts = [f"context {self.context or 'default'}", f"device {self.device}"]
        if self.merge:
            parts.append("LoRA merged")
        if self.runtime:
            parts.append(f"runtime {self.runtime}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class SettingsText:
    """The settings dialog's fields as typed."""

    system: str = ""
    temperature: str = "0"
    top_k: str = "64"
    top_p: str = "0.95"
    seed: str = ""
    max_new_tokens: str = "256"
    context: str = ""
    device: str = "auto"
    merge: bool = False
    runtime: str = "auto"

    @classmethod
    def of(cls, settings: ChatSettings) -> SettingsText:
        s = settings.sampling
        return cls(
            system=settings.system or "",
            temperature=f"{s.temperature:g}",
            top_k=str(s.top_k),
            top_p=f"{s.top_p:g}",
            seed="" if s.seed is None else str(s.seed),
            max_new_tokens=str(s.max_new_tokens),
            context="" if settings.context is None else str(settings.context),
            device=settings.device,
            merge=settings.merge,
            runtime=settings.runtime or "auto",
        )


def _whole(name: str, text: str, problems: list[str]) -> int | None:
    value = text.strip().replace("_", "")
    if not re.fullmatch(r"-?\d+", value):
        problems.append(f"{name}: {text.strip()!r} is not a whole number")
        return None
    return int(value)


def _number(name: str, text: str, problems: list[str]) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        problems.append(f"{name}: {text.strip()!r} is not a number")
        return None


def parse_chat_settings(fields: SettingsText) -> tuple[ChatSettings | None, str | None]:
    """The settings the fields describe, checked; or None and every problem in one line."""
    problems: list[str] = []
    temperature = _number("temperature", fields.temperature, problems)
    top_k = _whole("top-k", fields.top_k, problems)
    top_p = _number("top-p", fields.top_p, problems)
    seed = _whole("seed", fields.seed, problems) if fields.seed.strip() else None
    max_new = _whole("max new tokens", fields.max_new_tokens, problems)
    context = _whole("context", fields.context, problems) if fields.context.strip() else None
    if context is not None and context < MIN_CONTEXT:
        problems.append(f"context {context} is too small (at least {MIN_CONTEXT} tokens)")
    if fields.device not in DEVICES:
        problems.append(f"device {fields.device!r} is not one of {', '.join(DEVICES)}")
    if fields.runtime not in RUNTIMES:
        problems.append(f"runtime {fields.runtime!r} is not one of {', '.join(RUNTIMES)}")
    if problems:
        return None, "; ".join(problems)
    assert temperature is not None and top_k is not None and top_p is not None
    assert max_new is not None
    sampling = Sampling(
        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_new_tokens=max_new
    )
    try:
        check_sampling(sampling)
    except ChatError as error:
        return None, error.message
    return (
        ChatSettings(
            system=fields.system.strip() or None,
            sampling=sampling,
            context=context,
            device=fields.device,
            merge=fields.merge,
            runtime=None if fields.runtime == "auto" else fields.runtime,
        ),
        None,
    )


class ChatSettingsModal(ModalScreen[ChatSettings | None]):
    """Edits :class:`ChatSettings`; Enter (or the button) applies valid settings, esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "apply", "Apply", key_display="^s"),
    ]
    AUTO_FOCUS = "#set-system"

    def __init__(self, settings: ChatSettings, *, loaded: bool = False) -> None:
        super().__init__(classes="modal")
        self.settings = settings
        self.loaded = loaded
        self.result: ChatSettings | None = settings
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        t = SettingsText.of(self.settings)
        with Vertical(classes="dialog chat-settings-dialog"):
            yield Label("Chat settings", classes="dialog-title")
            with Horizontal(classes="settings-row"):
                yield Label("system prompt", classes="settings-label")
                yield Input(t.system, placeholder="none", id="set-system", compact=True)
            yield Label("Sampling: applies to the next message", classes="chat-settings-head")
            with Horizontal(classes="settings-row"):
                yield Label("temperature", classes="settings-label")
                yield Input(t.temperature, id="set-temperature", compact=True)
                yield Label("top-k", classes="settings-label")
                yield Input(t.top_k, id="set-top-k", compact=True)
            with Horizontal(classes="settings-row"):
                yield Label("top-p", classes="settings-label")
                yield Input(t.top_p, id="set-top-p", compact=True)
                yield Label("seed", classes="settings-label")
                yield Input(t.seed, placeholder="random", id="set-seed", compact=True)
            with Horizontal(classes="settings-row"):
                yield Label("max new tokens", classes="settings-label")
                yield Input(t.max_new_tokens, id="set-max-new", compact=True)
            reload = ": changing these reloads the model" if self.loaded else ""
            yield Label(f"Opening a model{reload}", classes="chat-settings-head")
            with Horizontal(classes="settings-row"):
                yield Label("context tokens", classes="settings-label")
                yield Input(t.context, placeholder="default", id="set-context", compact=True)
                yield Label("device", classes="settings-label")
                yield Select(
                    [(d, d) for d in DEVICES],
                    value=t.device,
                    allow_blank=False,
                    id="set-device",
                    compact=True,
                )
            with Horizontal(classes="settings-row"):
                yield Label("bundle runtime", classes="settings-label")
                yield Select(
                    [(r, r) for r in RUNTIMES],
                    value=t.runtime,
                    allow_blank=False,
                    id="set-runtime",
                    compact=True,
                )
                yield Checkbox("merge LoRA (faster)", t.merge, id="set-merge", compact=True)
            yield Static(id="set-error")
            yield Static(
                "Temperature 0 is greedy. Empty seed: a random one. Empty context: 2048 "
                "tokens for Keras models, an export's own length for bundles. Device: Keras "
                "models; runtime: bundles (.tflite runs on the interpreter only).",
                classes="dialog-help",
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Apply (enter)", variant="primary", id="set-apply", compact=True)
                yield Button("Cancel (esc)", id="set-cancel", compact=True)

    def on_mount(self) -> None:
        self.check()

    def fields(self) -> SettingsText:
        def value(selector: str) -> str:
            return self.query_one(selector, Input).value

        def chosen(selector: str) -> str:
            v = self.query_one(selector, Select).value
            return v if isinstance(v, str) else ""

        return SettingsText(
            system=value("#set-system"),
            temperature=value("#set-temperature"),
            top_k=value("#set-top-k"),
            top_p=value("#set-top-p"),
            seed=value("#set-seed"),
            max_new_tokens=value("#set-max-new"),
            context=value("#set-context"),
            device=chosen("#set-device"),
            merge=self.query_one("#set-merge", Checkbox).value,
            runtime=chosen("#set-runtime"),
        )

    def check(self) -> None:
        """Check the fields as they are now; show the problems in place."""
        self.result, self.error = parse_chat_settings(self.fields())
        box = self.query_one("#set-error", Static)
        if self.error is not None:
            box.update(Text(f"✗ {self.error}", style="bold red"))
        else:
            assert self.result is not None
            text = Text("✓ ", style="green")
            text.append(self.result.sampling.describe(), style="green")
            text.append(f" · {self.result.describe_open()}", style="dim")
            box.update(text)
        self.query_one("#set-apply", Button).disabled = self.error is not None

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _changed(self) -> None:
        self.check()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_apply()

    @on(Button.Pressed, "#set-apply")
    def _apply_pressed(self) -> None:
        self.action_apply()

    @on(Button.Pressed, "#set-cancel")
    def _cancel_pressed(self) -> None:
        self.dismiss(None)

    def action_apply(self) -> None:
        self.check()
        if self.result is None:
            self.notify("Fix the settings first (the problem is shown above).", severity="error")
            return
        self.dismiss(self.result)

    def action_cancel(self) -> None:
        self.dismiss(None)


# --------------------------------------------------------------------------- picking a target


@dataclass(frozen=True, slots=True)
class Pick:
    """What the picker returns: a listed target, or a name to resolve, or end compare."""

    target: ChatTarget | None = None
    ref: str | None = None
    end_compare: bool = False


END_COMPARE = "end-compare"


def target_prompt(target: ChatTarget) -> Text:
    """Two lines for the picker: the label with its kind, and the detail (or the problem)."""
    text = Text(no_wrap=True, overflow="ellipsis")
    if target.ok:
        text.append(f"{KIND_TAGS.get(target.kind, target.kind):>6} ", style="bold magenta")
        text.append(target.label, style="bold")
        text.append(f"\n       {target.detail}", style="dim")
    else:
        text.append(f"{KIND_TAGS.get(target.kind, target.kind):>6} ", style="dim")
        text.append(target.label, style="dim strike")
        text.append(f"\n       cannot be opened: {target.problem}", style="dim red")
    return text


class TargetPickerModal(ModalScreen[Pick | None]):
    """Lists what can be talked to; Enter opens the highlighted one, or the name typed."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
    ]
    AUTO_FOCUS = "#pick-list"

    def __init__(
        self,
        targets: list[ChatTarget],
        *,
        title: str = "Talk to…",
        current: str | None = None,
        can_end_compare: bool = False,
    ) -> None:
        super().__init__(classes="modal")
        self.targets = targets
        self.title_text = title
        self.current = current
        self.can_end_compare = can_end_compare

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog pick-dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Label(
                "↑ ↓ choose, enter opens; tab to type a name instead: a run (NAME or "
                "NAME@STEP), an export, a .task/.litertlm/.tflite file, or a model source "
                "(tiny, a .gguf, a Hugging Face folder, a keras-hub preset).",
                classes="dialog-help",
            )
            options: list[Option] = []
            if self.can_end_compare:
                options.append(
                    Option(
                        Text("     ✗ End compare: back to one model", style="bold yellow"),
                        id=END_COMPARE,
                    )
                )
            for number, target in enumerate(self.targets):
                options.append(
                    Option(target_prompt(target), id=str(number), disabled=not target.ok)
                )
            yield OptionList(*options, id="pick-list")
            yield Input(placeholder="or type a name, then enter", id="pick-ref")
            yield Label("", classes="dialog-error", id="pick-error")

    def on_mount(self) -> None:
        option_list = self.query_one(OptionList)
        refs = [t.ref for t in self.targets]
        if self.current in refs:
            offset = 1 if self.can_end_compare else 0
            option_list.highlighted = refs.index(self.current) + offset

    @on(OptionList.OptionSelected, "#pick-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        option_id = event.option.id
        if option_id == END_COMPARE:
            self.dismiss(Pick(end_compare=True))
            return
        if option_id is None:
            return
        target = self.targets[int(option_id)]
        if not target.ok:  # disabled options cannot be selected; kept for safety
            self.query_one("#pick-error", Label).update(f"Cannot open: {target.problem}")
            return
        self.dismiss(Pick(target=target))

    @on(Input.Submitted, "#pick-ref")
    def _typed(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value.strip()
        if not value:
            self.query_one("#pick-error", Label).update("Type a name first (tiny, a run, …).")
            return
        self.dismiss(Pick(ref=value))

    def action_cancel(self) -> None:
        self.dismiss(None)


# --------------------------------------------------------------------------- saving


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return slug[:48].strip("-.") or "chat"


def target_slug(target: ChatTarget | None) -> str:
    """A short file-name part for ``target``: the run and step, the bundle's name, the model."""
    if target is None:
        return "chat"
    if target.kind == "bundle" and target.path is not None:
        return _slug(target.path.stem + target.path.suffix.replace(".", "-"))
    return _slug(target.ref.replace("@", "-"))


def default_save_path(chats_dir: Path, target: ChatTarget | None, now: datetime) -> Path:
    """``<workspace>/chats/<model>-<YYYYmmdd-HHMMSS>.jsonl``."""
    return chats_dir / f"{target_slug(target)}-{now.strftime('%Y%m%d-%H%M%S')}.jsonl"
