"""The Chat screen, Pilot-driven, on real models: the tiny random Gemma 3 (``tiny``, loads in
seconds on the CPU) and the tiny "Yes." run (``yes_run``: trained for real, answers "Yes."
then stops). Nothing about the models is scripted: replies stream from the Keras/JAX backend
in the screen's thread workers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import Button, Input, Markdown, OptionList, Select, Static

from gemma_tui.app import GemmaTuiApp
from gemma_tui.chat_stream import DeltaBatcher, ReplyStreamed
from gemma_tui.screens.chat import SLOT_A, SLOT_B, ChatScreen
from gemma_tui.screens.chat_modals import (
    END_COMPARE,
    ChatSettingsModal,
    SettingsText,
    TargetPickerModal,
    default_save_path,
    parse_chat_settings,
)
from gemma_tui.screens.help import HelpScreen
from gemma_tui.screens.modals import OutputPathsModal
from pipeline.inference.chat import Sampling
from tests.tui.conftest import TERMINAL_SIZE, key_latency, settle, wait_until
from tests.tui.run_folders import write_run
from tests.tui.scripted_export import ScriptedExport
from tests.tui.test_runs_screen import cursor_to, open_runs

LOAD_TIMEOUT = 120.0
STATS = re.compile(r"\d+ tokens · first token \d+\.\d\d s · \d+\.\d tok/s")


def chat_screen(app: Any) -> ChatScreen:
    screen = app.get_screen_stack("chat")[0]
    assert isinstance(screen, ChatScreen)
    return screen


def plain(widget: Static) -> str:
    content = widget.content
    return content.plain if isinstance(content, Text) else str(content)


def log_texts(screen: ChatScreen, slot: str = SLOT_A) -> list[str]:
    """Each entry of a pane's log as plain text (Markdown replies by their source)."""
    out = []
    for widget in screen.pane(slot).entries():
        if isinstance(widget, Markdown):
            out.append(widget.source)
        elif isinstance(widget, Static):
            out.append(plain(widget))
    return out


async def open_chat(pilot: Pilot[Any]) -> ChatScreen:
    await pilot.press("5")
    screen = chat_screen(pilot.app)
    assert pilot.app.screen is screen
    return screen


async def change_settings(pilot: Pilot[Any], fields: dict[str, str]) -> ChatSettingsModal:
    """F4, type ``fields`` (field id without ``set-`` -> text), ctrl+s applies."""
    await pilot.press("f4")
    modal = pilot.app.screen
    assert isinstance(modal, ChatSettingsModal)
    for name, value in fields.items():
        if name in ("device", "runtime"):
            modal.query_one(f"#set-{name}", Select).value = value
        else:
            modal.query_one(f"#set-{name}", Input).value = value
    await pilot.pause()
    assert modal.error is None, modal.error
    await pilot.press("ctrl+s")
    await pilot.pause()
    return modal


async def load(pilot: Pilot[Any], screen: ChatScreen, ref: str, *, key: str = "f2") -> None:
    """Pick ``ref`` by typing its name in the picker (F2, or F3 for the second pane), and
    wait until it has loaded."""
    slot = screen.slots[SLOT_B if key == "f3" else SLOT_A]
    listed = screen.listed
    await pilot.press(key)
    await wait_until(lambda: screen.listed > listed)
    await pilot.pause()
    assert isinstance(pilot.app.screen, TargetPickerModal)
    await pilot.press("tab", *ref, "enter")
    assert slot.state in ("loading", "ready")  # a second load of a model can be quick
    await wait_until(lambda: slot.state != "loading", timeout=LOAD_TIMEOUT)
    await pilot.pause()
    assert slot.state == "ready", log_texts(screen, slot.name)


async def send(pilot: Pilot[Any], screen: ChatScreen, text: str) -> None:
    """Type ``text`` and press enter (polled, not ``pilot.press``, which waits for an idle
    screen that a streaming reply does not give)."""
    screen.input.value = text
    before = screen.dispatched
    await key_latency(pilot.app, "enter", lambda: screen.dispatched > before)


async def replies_done(pilot: Pilot[Any], screen: ChatScreen, timeout: float = 60) -> None:
    await wait_until(lambda: not screen.generating, timeout=timeout)
    await pilot.pause()


def record(kinds: tuple[type[Message], ...], into: list[Message]) -> Any:
    """A message hook keeping the messages of ``kinds`` once each (the hook sees a message
    at every pump that dispatches it)."""
    seen: set[int] = set()

    def hook(message: Message) -> None:
        if isinstance(message, kinds) and id(message) not in seen:
            seen.add(id(message))
            into.append(message)

    return hook


# --------------------------------------------------------------------------- no model


def test_settings_are_parsed_and_checked() -> None:
    settings, error = parse_chat_settings(
        SettingsText(system=" Be brief. ", temperature="0.7", seed="7", context="512")
    )
    assert error is None and settings is not None
    assert settings.system == "Be brief."
    assert settings.sampling == Sampling(temperature=0.7, top_k=64, top_p=0.95, seed=7)
    assert settings.context == 512 and settings.runtime is None
    options = settings.open_options()
    assert options.context_length == 512 and options.device == "auto"
    assert SettingsText.of(settings) == SettingsText(
        system="Be brief.", temperature="0.7", seed="7", context="512"
    )
    _, error = parse_chat_settings(SettingsText(temperature="hot", top_k="1.5", context="32"))
    assert error == (
        "temperature: 'hot' is not a number; top-k: '1.5' is not a whole number; "
        "context 32 is too small (at least 64 tokens)"
    )
    _, error = parse_chat_settings(SettingsText(top_p="1.5", max_new_tokens="0"))
    assert error == (  # the pipeline's own words (check_sampling)
        "top-p 1.5 must be above 0 and at most 1; max new tokens 0 must be at least 1"
    )
    _, error = parse_chat_settings(SettingsText(device="tpu", runtime="mediapipe"))
    assert error is not None and "device 'tpu'" in error and "runtime 'mediapipe'" in error


def test_the_batcher_posts_at_most_every_interval_and_loses_nothing() -> None:
    now = [0.0]
    posted: list[Message] = []
    batcher = DeltaBatcher(posted.append, "a", 7, interval_seconds=0.05, clock=lambda: now[0])
    pieces = [f"t{i} " for i in range(100)]
    for piece in pieces:  # 100 tokens at 1 ms each: the first posts at once, then every 50 ms
        batcher.add(piece)
        now[0] += 0.001
    batcher.add("")  # empty pieces are not counted
    batcher.flush()
    assert all(isinstance(m, ReplyStreamed) and m.job_id == 7 for m in posted)
    streamed = [m for m in posted if isinstance(m, ReplyStreamed)]
    assert len(streamed) == batcher.posts == 3  # at 0 ms, at 50 ms, and the flush
    assert "".join(m.text for m in streamed) == "".join(pieces)
    assert [m.pieces for m in streamed] == [1, 51, 100]
    assert streamed[0].first_s == 0.0 and streamed[-1].elapsed_s == pytest.approx(0.1)


def test_default_save_path_names_the_model_and_the_time(tmp_path: Path) -> None:
    from datetime import datetime

    from pipeline.inference.targets import ChatTarget

    now = datetime(2026, 1, 2, 3, 4, 5)
    run = ChatTarget("checkpoint", "my-run@final", "my-run · final", "LoRA on tiny")
    assert default_save_path(tmp_path, run, now) == tmp_path / "my-run-final-20260102-030405.jsonl"
    bundle = ChatTarget("bundle", "/x/e.task", "e · .task", "", path=Path("/x/e.task"))
    assert default_save_path(tmp_path, bundle, now).name == "e-task-20260102-030405.jsonl"


async def test_chat_is_mode_5_with_its_keys_in_help_and_footer(workspace: Path) -> None:
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_chat(pilot)
        assert app.focused is screen.input
        assert "F2 picks what to talk to" in " ".join(log_texts(screen))
        model_line = screen.pane(SLOT_A).query_one(".pane-model", Static)
        assert "No model: F2 picks one" in plain(model_line)
        assert not screen.pane(SLOT_B).display
        shown = {key for key, b in screen.active_bindings.items() if b.binding.show}
        assert {"f2", "f3", "f4", "ctrl+s", "ctrl+n", "ctrl+z"} <= shown
        assert "escape" not in shown  # stop: only while something runs
        # Enter with no model says so and keeps the text.
        screen.input.value = "Hello?"
        await pilot.press("enter")
        assert screen.input.value == "Hello?"
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        sections = dict(app.screen.sections)
        keys = dict(sections["Chat"])
        for key in ("f2", "f3", "f4", "^s", "^n", "^z", "esc"):
            assert key in keys, key
        assert "enter" in dict(sections["Chat input"])
        await pilot.press("escape")
        # esc leaves the input (then 1-5 switch screens); typing comes back to it
        await pilot.press("escape")
        assert app.focused is not screen.input
        await pilot.press("x")
        assert app.focused is screen.input and screen.input.value == "Hello?x"
        await pilot.press("escape", "3")
        assert app.current_mode == "runs"
        # the command palette's chat commands reach the Chat screen from anywhere
        await app.run_action("chat_command('settings')")
        await pilot.pause()
        assert app.current_mode == "chat" and isinstance(app.screen, ChatSettingsModal)


async def test_settings_dialog_shows_problems_as_typed(workspace: Path) -> None:
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_chat(pilot)
        await pilot.press("f4")
        modal = app.screen
        assert isinstance(modal, ChatSettingsModal)
        modal.query_one("#set-top-p", Input).value = "2"
        modal.query_one("#set-context", Input).value = "abc"
        await pilot.pause()
        error = plain(modal.query_one("#set-error", Static))
        assert error.startswith("✗ ") and "context: 'abc'" in error
        assert modal.query_one("#set-apply", Button).disabled
        await pilot.press("ctrl+s")  # refused: still open
        assert app.screen is modal
        modal.query_one("#set-top-p", Input).value = "0.9"
        modal.query_one("#set-context", Input).value = "1024"
        modal.query_one("#set-temperature", Input).value = "0.8"
        modal.query_one("#set-system", Input).value = "You are terse."
        await pilot.pause()
        assert plain(modal.query_one("#set-error", Static)).startswith("✓ temperature 0.8")
        await pilot.press("enter")
        assert app.screen is screen
        assert screen.settings.context == 1024 and screen.settings.system == "You are terse."
        assert screen.settings.sampling.top_p == 0.9
        assert str(screen.sub_title).startswith("temperature 0.8")


async def test_picker_lists_targets_greys_damaged_ones_and_bad_names_fail_in_the_log(
    workspace: Path,
) -> None:
    run = write_run(workspace, "older-run", days_ago=2, checkpoints=(10, 20), final=True)
    (run / "checkpoints" / "step-000020" / "adapter.npz").unlink()
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_chat(pilot)
        await pilot.press("f2")
        await wait_until(lambda: screen.listed == 1)
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, TargetPickerModal)
        refs = [t.ref for t in picker.targets]
        assert refs == ["embedded", "older-run@final", "older-run@20", "older-run@10"]
        options = picker.query_one(OptionList)
        damaged = options.get_option_at_index(2)
        assert damaged.disabled
        assert "cannot be opened: missing adapter.npz" in str(damaged.prompt)
        assert not options.get_option_at_index(1).disabled
        await pilot.press("escape")
        assert app.screen is screen
        # a name that is nothing: the error in the log, the screen usable
        await pilot.press("f2")
        await wait_until(lambda: screen.listed == 2)
        await pilot.pause()
        await pilot.press("tab", *"no-such-model", "enter")
        slot = screen.slots[SLOT_A]
        await wait_until(lambda: slot.state != "loading")
        await pilot.pause()
        assert slot.state == "failed" and slot.backend is None
        text = "\n".join(log_texts(screen))
        assert "✗ Chat: 'no-such-model' is not a run, an export, a bundle or a model" in text
        assert "Hint: `gemma-tui chat` takes: embedded, a run" in text
        assert "not loaded" in screen.pane(SLOT_A).state_text()


# --------------------------------------------------------------------------- the tiny model


async def test_load_tiny_stream_a_reply_with_stats_queue_undo_and_save(workspace: Path) -> None:
    from pipeline.data.checked_stream import iter_checked

    streamed: list[Message] = []
    app = GemmaTuiApp()
    hook = record((ReplyStreamed,), streamed)
    async with app.run_test(size=TERMINAL_SIZE, message_hook=hook) as pilot:
        screen = await open_chat(pilot)
        await change_settings(pilot, {"context": "512", "device": "cpu", "max-new": "200"})
        assert screen.settings.context == 512
        await load(pilot, screen, "tiny")
        slot = screen.slots[SLOT_A]
        model_line = plain(screen.pane(SLOT_A).query_one(".pane-model", Static))
        assert "tiny random Gemma 3" in model_line and "Keras/JAX on cpu" in model_line
        assert "context 512" in model_line
        assert slot.backend is not None and slot.backend.context_length == 512
        assert screen.pane(SLOT_A).state_text() == "ready · greedy, up to 200 tokens"

        # A reply streams in batches; the input stays usable: a second message is queued.
        await send(pilot, screen, "Hello there")
        assert slot.state == "generating" and app.focused is screen.input
        await wait_until(lambda: slot.live is not None and slot.live.pieces >= 3)
        live = screen.pane(SLOT_A).state_text()
        assert live.startswith("generating… ") and "first token" in live
        assert slot.reply is not None and slot.reply.source  # text shown before the end
        screen.input.value = "And then?"
        await key_latency(app, "enter", lambda: screen.queued == "And then?")
        assert screen.input.value == "" and app.focused is screen.input
        assert "queued: And then?" in plain(screen.query_one("#chat-queue", Static))
        # the queued message goes out when the first reply ends
        await wait_until(lambda: screen.queued is None, timeout=60)
        await replies_done(pilot, screen)
        session = slot.session
        assert session is not None and [ex.user for ex in session.history] == [
            "Hello there",
            "And then?",
        ]
        first = session.history[0]
        assert first.stats is not None and first.stats.new_tokens == 200
        mine = [m for m in streamed if isinstance(m, ReplyStreamed) and m.slot == SLOT_A]
        assert len({m.job_id for m in mine}) == 2 and len(mine) >= 4
        by_job: dict[int, str] = {}
        for m in mine:
            by_job[m.job_id] = by_job.get(m.job_id, "") + m.text
        assert list(by_job.values()) == [ex.reply for ex in session.history]  # nothing lost
        assert len(mine) <= sum(ex.stats.new_tokens for ex in session.history if ex.stats)

        # The log: each message, its reply (Markdown), its numbers; the status line too.
        texts = log_texts(screen)
        assert texts[1:4] == ["you  Hello there", first.reply, first.stats.describe()]
        assert STATS.search(texts[3]) and texts[3].endswith("hit max new tokens")
        state = screen.pane(SLOT_A).state_text()
        assert state.startswith("last reply: ") and STATS.search(state)

        # ctrl+z forgets the last exchange and puts its message back into the input.
        await pilot.press("ctrl+z")
        assert [ex.user for ex in session.history] == ["Hello there"]
        assert screen.input.value == "And then?"
        assert "you  And then?" not in log_texts(screen)
        screen.input.value = ""

        # ctrl+s: a path under the workspace, appended to, read back by the dataset reader.
        await pilot.press("ctrl+s")
        modal = app.screen
        assert isinstance(modal, OutputPathsModal)
        path_field = modal.query_one("#output-0", Input)
        default = Path(path_field.value)
        assert default.parent.resolve() == (workspace / "chats").resolve()
        assert re.fullmatch(r"tiny-\d{8}-\d{6}\.jsonl", default.name)
        target = workspace / "chats" / "good.jsonl"
        path_field.value = str(target)
        await pilot.press("enter")
        assert app.screen is screen
        await pilot.press("ctrl+s", "enter")  # again, to the same file: appended
        lines = target.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 2
        rows = list(iter_checked(target))
        assert len(rows) == 2 and all(row.valid for row in rows)
        conversation = rows[0].conversation
        assert conversation is not None and conversation.turns == session.transcript().turns
        assert [t.role for t in conversation.turns] == ["user", "model"]
        saved = [t for t in log_texts(screen) if t.startswith("Saved: appended")]
        assert saved[-1].startswith("Saved: appended the conversation (2 turns) to ")
        assert saved[-1].endswith("chats/good.jsonl.")

        # ctrl+n: a new conversation
        await pilot.press("ctrl+n")
        assert session.history == [] and log_texts(screen)[0].startswith("New conversation")
        backend = slot.backend
    # quitting closed the model
    assert backend is not None and backend.params == {}  # type: ignore[attr-defined]


async def test_stop_a_long_reply_an_error_then_a_reload_and_the_next_message_works(
    workspace: Path,
) -> None:
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_chat(pilot)
        await change_settings(pilot, {"context": "4096", "device": "cpu", "max-new": "2000"})
        await load(pilot, screen, "tiny")
        slot = screen.slots[SLOT_A]
        await send(pilot, screen, "Tell me a very long story.")
        await wait_until(lambda: slot.live is not None and slot.live.pieces >= 20)
        shown = {key for key, b in screen.active_bindings.items() if b.binding.show}
        assert "escape" in shown  # "esc Stop" in the footer while generating
        screen.input.value = "Shorter, please."
        await key_latency(app, "enter", lambda: screen.queued is not None)
        await key_latency(app, "escape", lambda: not screen.generating)
        await pilot.pause()
        session = slot.session
        assert session is not None and len(session.history) == 1
        stats = session.history[0].stats
        assert stats is not None and stats.stop_reason == "stopped"
        assert 20 <= stats.new_tokens < 2000
        texts = log_texts(screen)
        assert texts[-1] == stats.describe() and texts[-1].endswith(" · stopped")
        assert slot.last_stats is stats
        replies = list(screen.pane(SLOT_A).log_view.query(Markdown))
        assert replies[-1].has_class("-stopped") and replies[-1].source
        assert session.history[0].reply == replies[-1].source
        # the queued message came back into the input, not sent
        assert screen.queued is None and screen.input.value == "Shorter, please."
        assert app.focused is screen.input

        # Leaving for another screen stops a reply too; the model stays loaded.
        await send(pilot, screen, "Go on.")
        await wait_until(lambda: slot.live is not None and slot.live.pieces >= 5)
        await app.switch_mode("runs")
        await wait_until(lambda: not screen.generating)
        await app.switch_mode("chat")
        await pilot.pause()
        gone_on = session.history[-1]
        assert gone_on.user == "Go on." and gone_on.stats is not None
        assert gone_on.stats.stop_reason == "stopped"
        assert slot.state == "ready" and slot.backend is not None

        # A message too long for the context: the error in the log, nothing changed, the
        # message back in the input to shorten.
        long = "word " * 5000
        await send(pilot, screen, long)
        await replies_done(pilot, screen)
        assert len(session.history) == 2 and slot.state == "ready"
        error = log_texts(screen)[-1]
        assert error.startswith("✗ Chat: This message alone is 50")
        assert "the model holds 4096 tokens" in error and "Hint: Shorten the message" in error
        assert screen.input.value == long

        # A smaller context reloads the model and keeps the conversation; sampling applies
        # to the next message, which works.
        first = slot.backend
        await change_settings(pilot, {"context": "1024", "max-new": "8"})
        assert "Opening tiny random Gemma 3 (seed 0) (context 1024, device cpu)…" in (
            log_texts(screen)
        )
        await wait_until(lambda: slot.state == "ready", timeout=LOAD_TIMEOUT)
        await pilot.pause()
        assert slot.backend is not first and slot.backend is not None
        assert slot.backend.context_length == 1024
        assert first is not None and first.params == {}  # type: ignore[attr-defined]
        assert slot.session is session and session.backend is slot.backend
        assert "The conversation goes on." in log_texts(screen)[-1]
        await send(pilot, screen, "Shorter, please.")
        await replies_done(pilot, screen)
        assert [ex.user for ex in session.history] == [
            "Tell me a very long story.",
            "Go on.",
            "Shorter, please.",
        ]
        last = session.history[-1].stats
        assert last is not None and last.new_tokens == 8 and last.stop_reason == "max_tokens"


async def test_runs_t_then_compare_a_checkpoint_with_its_base_model(
    yes_run: tuple[Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Runs screen's t opens the "Yes." run's newest checkpoint; F3 puts the untrained
    tiny model beside it; one message, two replies side by side, each with its numbers."""
    ws, run_dir = yes_run
    monkeypatch.setenv("GEMMA_TUI_WORKSPACE", str(ws.root))
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        runs = await open_runs(pilot)
        cursor_to(runs, run_dir.name)
        await pilot.press("t")
        assert app.current_mode == "chat"
        screen = chat_screen(app)
        a, b = screen.slots[SLOT_A], screen.slots[SLOT_B]
        assert a.state == "loading"
        await wait_until(lambda: a.state != "loading", timeout=LOAD_TIMEOUT)
        await pilot.pause()
        assert a.state == "ready" and a.target is not None
        assert a.target.ref == f"{run_dir.name}@final" and a.target.kind == "checkpoint"
        assert "+ LoRA" in plain(screen.pane(SLOT_A).query_one(".pane-model", Static))
        await change_settings(pilot, {"max-new": "24"})

        await load(pilot, screen, "tiny", key="f3")
        assert screen.compare and screen.pane(SLOT_B).display
        left, right = screen.pane(SLOT_A).region, screen.pane(SLOT_B).region
        assert left.y == right.y and left.right <= right.x  # side by side
        await send(pilot, screen, "What is 3 plus 3?")
        assert a.state == b.state == "generating"  # both at once, in two threads
        await replies_done(pilot, screen)
        assert a.session is not None and b.session is not None
        (ex_a,), (ex_b,) = a.session.history, b.session.history
        assert ex_a.user == ex_b.user == "What is 3 plus 3?"
        assert ex_a.reply == "Yes." and ex_a.stats is not None
        assert ex_a.stats.stop_reason == "stop_token"
        assert ex_b.reply != "Yes." and ex_b.stats is not None and ex_b.stats.new_tokens == 24
        for slot, ex in ((SLOT_A, ex_a), (SLOT_B, ex_b)):
            assert ex.stats is not None
            assert log_texts(screen, slot)[-3:] == [
                "you  What is 3 plus 3?",
                ex.reply,
                ex.stats.describe(),
            ]
            assert screen.pane(slot).state_text() == f"last reply: {ex.stats.describe()}"

        # Save both conversations: one line each.
        await pilot.press("ctrl+s")
        modal = app.screen
        assert isinstance(modal, OutputPathsModal)
        option = modal.query_one("#output-option", Select)
        assert option.value == f"A: {a.target.label}"
        option.value = "both"
        out = ws.root / "chats" / "compare.jsonl"
        modal.query_one("#output-0", Input).value = str(out)
        await pilot.press("enter")
        assert len(out.read_text(encoding="utf-8").splitlines()) == 2

        # F3 again: end compare (B's model closed).
        backend_b = b.backend
        listed = screen.listed
        await pilot.press("f3")
        await wait_until(lambda: screen.listed > listed)
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, TargetPickerModal)
        assert picker.query_one(OptionList).get_option_at_index(0).id == END_COMPARE
        await pilot.press("enter")
        assert not screen.compare and not screen.pane(SLOT_B).display
        assert backend_b is not None and backend_b.params == {}  # type: ignore[attr-defined]
        assert screen.slots[SLOT_B].backend is None


async def test_export_try_step_ctrl_t_opens_the_bundle_in_chat(workspace: Path) -> None:
    """The Export screen's ^t (Try it step) opens the chosen bundle on the Chat screen; the
    scripted export's bundles are zeros, so the pipeline's check refuses it, in the log."""
    from tests.tui.test_export_screen import open_export, scripted, write_two_runs

    write_two_runs(workspace)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        export = await open_export(pilot)
        scripted(export, ScriptedExport())
        await pilot.press("f5")
        await wait_until(lambda: export.result is not None)
        await settle(pilot)  # type: ignore[arg-type]
        await pilot.press("ctrl+n")
        assert export.step == 4
        shown = {key for key, b in export.active_bindings.items() if b.binding.show}
        assert "ctrl+t" in shown
        await pilot.press("ctrl+t")
        assert app.current_mode == "chat"
        screen = chat_screen(app)
        slot = screen.slots[SLOT_A]
        await wait_until(lambda: slot.state != "loading")
        await pilot.pause()
        assert slot.state == "failed" and slot.target is not None
        assert slot.target.kind == "bundle" and slot.target.path is not None
        assert slot.target.path.suffix == ".task"
        assert log_texts(screen)[-1].startswith("✗ Chat: ")
        assert "is not a usable .task bundle" in log_texts(screen)[-1]


@pytest.mark.slow
async def test_compare_a_checkpoint_with_its_exported_bundle(
    yes_run: tuple[Any, Path], yes_export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "Yes." run's final checkpoint (Keras/JAX) beside its .task (LiteRT-LM, in the
    export environment's worker process): both answer "Yes." and stop."""
    ws, run_dir = yes_run
    monkeypatch.setenv("GEMMA_TUI_WORKSPACE", str(ws.root))
    bundle = next(yes_export.glob("*.task"))
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_chat(pilot)
        await change_settings(pilot, {"device": "cpu", "max-new": "12"})
        await load(pilot, screen, f"{run_dir}@final")
        await load(pilot, screen, str(bundle), key="f3")
        b = screen.slots[SLOT_B]
        assert b.target is not None and b.target.kind == "bundle"
        assert b.backend is not None and "LiteRT-LM" in b.backend.label
        await send(pilot, screen, "What is 4 plus 4?")
        await replies_done(pilot, screen, timeout=120)
        for slot in screen.active():
            assert slot.session is not None, log_texts(screen, slot.name)
            (exchange,) = slot.session.history
            assert exchange.reply == "Yes." and exchange.stats is not None
            assert exchange.stats.stop_reason == "stop_token"
        process = b.backend.proc  # type: ignore[attr-defined]
        assert process is not None and process.poll() is None
    # quitting closed the bundle's worker process
    assert process.poll() is not None
