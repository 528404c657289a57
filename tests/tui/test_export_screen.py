"""The Export screen, Pilot-driven: real run folders with real checkpoints, the settings
checked by the pipeline, exports driven by a scripted event source (the pipeline's events in
its order), and one real export of a tiny trained run, end to end."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Log, OptionList, Static

from gemma_tui.app import MODES, GemmaTuiApp
from gemma_tui.screens.export import ExportScreen
from gemma_tui.screens.export_settings import SettingsFields, parse_settings
from gemma_tui.screens.modals import ConfirmModal, ErrorModal
from gemma_tui.widgets.export_steps import StageList, export_stages
from pipeline.export.env import ExportEnv, find_export_env
from pipeline.export.job import ExportOptions
from tests.tui.conftest import TERMINAL_SIZE, key_latency, settle, wait_until
from tests.tui.run_folders import write_run
from tests.tui.scripted_export import (
    ScriptedEnvCreation,
    ScriptedExport,
    ScriptedReplies,
    stages_of,
)
from tests.tui.test_runs_screen import cursor_to, open_runs

GiB = 1024**3
NEWER = "cpu-smoke-20260102-120000"
OLDER = "cpu-smoke-20260101-120000"


def write_two_runs(workspace: Path) -> tuple[Path, Path]:
    """An older finished run (steps 10, 20, final at 40) and a newer stopped one whose
    step 20 lost its adapter (damaged)."""
    older = write_run(workspace, OLDER, days_ago=5, checkpoints=(10, 20), final=True)
    newer = write_run(
        workspace, NEWER, status="stopped", step=25, total=40, days_ago=1, checkpoints=(10, 20)
    )
    (newer / "checkpoints" / "step-000020" / "adapter.npz").unlink()
    return older, newer


def plain(widget: Static) -> str:
    """The text a Static shows (its content as set)."""
    content = widget.content
    return content.plain if isinstance(content, Text) else str(content)


def rendered(widget: Static) -> str:
    """What a Static shows, as plain text lines (tables included)."""
    import io

    from rich.console import Console

    console = Console(width=widget.size.width or 100, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


def export_screen(app: Any) -> ExportScreen:
    screen = app.get_screen_stack("export")[0]
    assert isinstance(screen, ExportScreen)
    return screen


async def open_export(pilot: Pilot[Any], *, listings: int = 1) -> ExportScreen:
    await pilot.press("4")
    screen = export_screen(pilot.app)
    await wait_until(lambda: screen.listed >= listings)
    await pilot.pause()
    return screen


def scripted(screen: ExportScreen, script: ScriptedExport) -> ScriptedExport:
    """Export with ``script``; the export environment is said to exist."""
    screen.export_fn = script
    screen.find_env_fn = lambda: ExportEnv(Path(sys.executable), "test")
    return script


def test_settings_are_parsed_and_checked_by_the_pipeline() -> None:
    fields = SettingsFields("dynamic_int8", "32, 128", "1280", "0.90", "32", ("task",))
    options, error = parse_settings(fields)
    assert error is None and options is not None
    assert options.prefill_lens == (32, 128) and options.kv_len == 1280
    assert options.min_agreement is None and options.threshold == 0.9  # the default
    options, _ = parse_settings(SettingsFields("fp16", "128", "1280", "80%", "32", ("task",)))
    assert options is not None and options.threshold == pytest.approx(0.8)

    def error_of(**changes: Any) -> str | None:
        values = {"quant": "fp16", "prefill": "128", "kv_len": "1280", "threshold": ""}
        values |= {"max_new_tokens": "32", "formats": ("task",)} | changes
        return parse_settings(SettingsFields(**values))[1]

    assert error_of(kv_len="8") == "KV-cache length 8 is too small (at least 16)"
    assert error_of(kv_len="64") == "prefill length 128 exceeds the KV-cache length 64"
    assert error_of(kv_len="lots") == "KV-cache length: 'lots' is not a whole number"
    assert error_of(formats=()) == "no output format; choose from task, litertlm, tflite"
    assert error_of(threshold="1.5") == "--min-agreement 1.5 is not between 0 and 1"
    assert error_of(max_new_tokens="0") == "max_new_tokens must be at least 1"


def test_the_stage_list_follows_the_options() -> None:
    both = ExportOptions(formats=("task", "litertlm"))
    assert export_stages(both) == stages_of(both)
    assert export_stages(both) == [
        "tools", "merge", "reference", "checkpoint", "converter", "load", "convert", "bundle_task",
        "bundle_litertlm", "verify_task", "verify_task_engine", "verify_litertlm_engine",
        "verify",
    ]  # fmt: skip
    tflite = ExportOptions(formats=("tflite",))
    assert export_stages(tflite)[-2:] == ["verify_tflite", "verify"]
    litertlm = ExportOptions(formats=("litertlm",))
    assert export_stages(litertlm)[-4:] == [
        "bundle_litertlm", "verify_tflite", "verify_litertlm_engine", "verify"
    ]  # fmt: skip
    assert export_stages(litertlm) == stages_of(litertlm)
    unverified = ExportOptions(formats=("litertlm",), verify=False)
    assert export_stages(unverified) == [
        "tools", "merge", "checkpoint", "converter", "load", "convert", "bundle_litertlm"
    ]  # fmt: skip


async def test_export_is_mode_4() -> None:
    assert [mode.name for mode in MODES][:4] == ["dataset", "train", "runs", "export"]
    assert next(mode for mode in MODES if mode.name == "export").key == "4"


async def test_source_lists_runs_and_checkpoints_damaged_ones_greyed(workspace: Path) -> None:
    older, newer = write_two_runs(workspace)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_export(pilot)
        assert app.current_mode == "export" and app.screen is screen
        table = screen.query_one("#source-runs", DataTable)
        names = [str(table.get_row(key)[0]) for key in table.rows]
        assert names == [NEWER, OLDER]  # newest first, and preselected
        assert screen.run_dir == newer
        listing = screen.query_one("#source-checkpoints", OptionList)
        options = [listing.get_option_at_index(i) for i in range(listing.option_count)]
        assert [o.id for o in options] == [
            str(newer / "checkpoints" / "step-000010"),
            str(newer / "checkpoints" / "step-000020"),
        ]
        assert [o.disabled for o in options] == [False, True]
        damaged = options[1].prompt
        assert isinstance(damaged, Text) and "damaged: missing adapter.npz" in damaged.plain
        # The newest usable checkpoint is chosen, resolved as the pipeline resolves it.
        assert listing.highlighted == 0
        assert screen.source is not None and screen.source.step == 10
        assert screen.source.model_source == "embedded"
        assert screen.arch is not None and screen.arch.name == "gemma3_270m"
        preview = plain(screen.query_one("#source-preview", Static))
        assert "Export step-000010 (step 10) of embedded (gemma3_270m)" in preview

        # The older run: its final checkpoint (step 40) is preferred.
        table.focus()
        await pilot.press("down")
        await pilot.pause()
        assert screen.run_dir == older
        assert [c.path.name for c in screen.checkpoints] == ["step-000010", "step-000020", "final"]
        assert screen.source is not None and screen.source.final and screen.source.step == 40
        # enter on the run goes to its checkpoints, enter there to the settings
        await pilot.press("enter")
        assert app.focused is listing
        await pilot.press("up", "enter")
        await pilot.pause()
        assert screen.step == 1
        assert screen.source is not None and screen.source.step == 20
        source_line = plain(screen.query_one("#settings-source", Static))
        assert f"exports/{OLDER}-step20-q8" in source_line


async def test_runs_screen_e_exports_the_selected_run(workspace: Path) -> None:
    older, _ = write_two_runs(workspace)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        runs = await open_runs(pilot)
        cursor_to(runs, OLDER)
        await pilot.press("e")
        await pilot.pause()
        assert app.current_mode == "export"
        screen = export_screen(app)
        await wait_until(lambda: screen.run_dir == older)
        assert screen.step == 0
        assert screen.source is not None and screen.source.final
        # Back on the Runs screen, e on another run selects that one instead.
        await pilot.press("3")
        cursor_to(runs, NEWER)
        await pilot.press("e")
        await wait_until(lambda: screen.run_dir is not None and screen.run_dir.name == NEWER)


async def test_settings_show_estimates_memory_and_errors_in_place(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_two_runs(workspace)
    monkeypatch.setattr("pipeline.export.job.available_memory", lambda: 4 * GiB)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_export(pilot)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert screen.step == 1
        table = screen.query_one("#quant-table", DataTable)
        rows = {key.value: [str(c) for c in table.get_row(key)] for key in table.rows}
        assert list(rows) == [
            "none", "fp16", "dynamic_int8", "weight_only_int8", "dynamic_int4_block32",
            "dynamic_int4_block128",
        ]  # fmt: skip
        # Gemma 3 270M at 8 bits: a 0.27 GB file; the converter peaks at about 6.5 GiB.
        assert rows["dynamic_int8"][:3] == ["dynamic_int8", "q8", "268.1 MB"]
        assert rows["fp16"][2] == "536.2 MB" and rows["none"][2] == "1.1 GB"
        assert rows["dynamic_int8"][4] == "6.5 GiB"
        peak = table.get_cell("dynamic_int8", "peak")
        assert isinstance(peak, Text) and peak.style == "bold red"  # more than the 4 GiB free
        memory = screen.query_one("#settings-memory", Static)
        assert "Not enough memory" in plain(memory) and "only 4.0 GiB" in plain(memory)
        assert screen.quant == "dynamic_int8" and screen.options is not None

        # Another quantization: its default threshold follows.
        await pilot.press("up")
        await pilot.pause()
        assert screen.quant == "fp16"
        assert screen.query_one("#opt-threshold", Input).value == "0.95"
        assert screen.options is not None and screen.options.threshold == 0.95

        # A KV cache too small: the pipeline's message, in place; F5 does not start.
        error = screen.query_one("#settings-error", Static)
        screen.query_one("#opt-kv", Input).value = "8"
        await pilot.pause()
        assert screen.options is None
        assert "KV-cache length 8 is too small (at least 16)" in plain(error)
        assert error.has_class("-error")
        await pilot.press("f5")
        await pilot.pause()
        assert not screen.busy and screen.step == 1
        screen.query_one("#opt-kv", Input).value = "64"
        await pilot.pause()
        assert "prefill length 128 exceeds the KV-cache length 64" in plain(error)
        screen.query_one("#opt-prefill", Input).value = "32"
        await pilot.pause()
        assert screen.options is not None and screen.options.kv_len == 64
        assert "Settings are valid" in plain(error)
        # on the device: the file plus a KV cache of 64 tokens (2.4 MB) instead of 1280
        assert str(table.get_cell("dynamic_int8", "device")) == "270.5 MB"


async def test_scripted_export_shows_each_stage_then_the_report(workspace: Path) -> None:
    older, _ = write_two_runs(workspace)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_export(pilot)
        script = scripted(screen, ScriptedExport(hold_at="convert"))
        cursor_to_older = screen.query_one("#source-runs", DataTable)
        cursor_to_older.move_cursor(row=1)
        await wait_until(lambda: screen.run_dir == older)
        await pilot.press("f5")
        await wait_until(script.holding.is_set)
        stages = screen.query_one(StageList)
        await wait_until(lambda: stages.states().get("convert") == "running")
        assert screen.busy and screen.step == 2
        states = stages.states()
        assert [s for s, state in states.items() if state == "done"] == [
            "tools", "merge", "reference", "checkpoint", "converter", "load"
        ]  # fmt: skip
        assert [s for s, state in states.items() if state == "pending"] == [
            "bundle_task", "bundle_litertlm", "verify_task", "verify_task_engine",
            "verify_litertlm_engine", "verify",
        ]  # fmt: skip
        assert stages.rows["merge"].seconds == 5.16
        assert stages.rows["merge"].summary == "scripted merge done"
        status = plain(screen.query_one("#export-status", Static))
        assert status.startswith("running · ") and status.endswith("convert to TFLite")
        log = "\n".join(screen.query_one(Log).lines)
        assert "Loading the scripted base model as float32" in log
        assert "✓ model (0.5 s): scripted Gemma 3 270M; float32" in log  # a sub-stage
        # The report and try-it steps wait for the result.
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert screen.step == 2
        script.release.set()
        await wait_until(lambda: not screen.busy)
        await settle(pilot)
        assert set(stages.states().values()) == {"done"}
        assert script.calls[0]["checkpoint"] == "final"
        assert script.calls[0]["options"].formats == ("task", "litertlm")
        assert script.calls[0]["run"] == older
        # The report: the verdict, the files with their sizes, verify.md.
        assert screen.step == 3 and screen.result is not None
        verdict = plain(screen.query_one("#report-verdict", Static))
        assert verdict.startswith("✓ Ready · verification passed")
        assert (
            "task/interpreter: next-token 100.0% (threshold 90%), greedy 100.0%, stop test 2/2"
            in verdict
        )
        assert f"{OLDER}-final-q8.task  41.0 KB" in verdict
        assert f"{OLDER}-final-q8.litertlm  42.0 KB" in verdict
        markdown = (screen.result.out_dir / "verify.md").read_text(encoding="utf-8")
        assert "**PASSED**" in markdown
        assert screen.query_one("#report-md").source == markdown  # type: ignore[attr-defined]
        assert "done in 47 s" in plain(screen.query_one("#export-status", Static))
        # The settings now say the export exists.
        assert screen.settings.existing == screen.result.out_dir
        assert "exists" in plain(screen.query_one("#settings-error", Static))


async def test_failed_verification_is_red_with_the_numbers(workspace: Path) -> None:
    write_two_runs(workspace)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_export(pilot)
        scripted(screen, ScriptedExport(passed=False))
        await pilot.press("f5")
        await wait_until(lambda: screen.result is not None)
        await settle(pilot)
        verdict = screen.query_one("#report-verdict", Static).content
        assert isinstance(verdict, Text)
        assert verdict.plain.startswith("✗ Verification FAILED")
        assert "task/interpreter: next-token 28.6% (threshold 90%), greedy 25.0%  FAIL" in (
            verdict.plain
        )
        assert any("red" in str(span.style) for span in verdict.spans)
        assert "**FAILED**" in screen.query_one("#report-md").source  # type: ignore[attr-defined]
        notes = [(n.title, n.severity) for n in app._notifications]
        assert ("Export finished", "error") in notes


async def test_cancel_asks_then_stops_the_export_and_writes_nothing(workspace: Path) -> None:
    write_two_runs(workspace)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_export(pilot)
        script = scripted(screen, ScriptedExport(hold_at="convert"))
        await pilot.press("f5")
        await wait_until(script.holding.is_set)
        # "n" keeps exporting.
        await key_latency(app, "escape", lambda: isinstance(app.screen, ConfirmModal))
        await key_latency(app, "n", lambda: app.screen is screen)
        assert screen.busy and not script.stopped
        await key_latency(app, "escape", lambda: isinstance(app.screen, ConfirmModal))
        await key_latency(app, "y", lambda: app.screen is screen)
        await wait_until(lambda: not screen.busy)
        await settle(pilot)
        assert script.stopped  # should_stop said yes
        states = screen.query_one(StageList).states()
        assert states["convert"] == "cancelled" and states["bundle_task"] == "pending"
        assert screen.state == "cancelled"
        status = plain(screen.query_one("#export-status", Static))
        assert status.startswith("cancelled after") and status.endswith("nothing written")
        assert not (workspace / "exports").exists()
        assert screen.result is None
        assert any(n.title == "Cancelled" for n in app._notifications)


async def test_an_export_error_shows_its_hint(workspace: Path) -> None:
    write_two_runs(workspace)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_export(pilot)
        scripted(screen, ScriptedExport(fail_at="convert"))
        await pilot.press("f5")
        await wait_until(lambda: isinstance(app.screen, ErrorModal))
        modal = app.screen
        assert isinstance(modal, ErrorModal)
        assert modal.report.title == "Export failed"
        assert "the convert stage failed: RuntimeError: scripted failure" in modal.report.message
        assert modal.report.hint is not None and ".failed.log" in modal.report.hint
        await pilot.press("escape")
        await settle(pilot)
        states = screen.query_one(StageList).states()
        assert states["convert"] == "failed" and states["load"] == "done"
        status = plain(screen.query_one("#export-status", Static))
        assert status.startswith("✗ Export failed: the convert stage failed")
        assert "Hint: The converter's full output is in" in status
        assert screen.query_one(StageList).rows["convert"].summary.startswith("the convert stage")


async def test_missing_environment_is_created_first_then_the_export_runs(
    workspace: Path, tmp_path: Path
) -> None:
    write_two_runs(workspace)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_export(pilot)
        script = scripted(screen, ScriptedExport())
        creation = ScriptedEnvCreation(tmp_path / "venv" / "bin" / "python")
        screen.find_env_fn = lambda: None
        screen.create_env_fn = creation
        # "Not now": nothing starts.
        await pilot.press("f5")
        await pilot.pause()
        modal = app.screen
        assert isinstance(modal, ConfirmModal)
        assert modal.title_text == "Create the export environment now?"
        assert "about 4.5 GB" in modal.message and "3-6 minutes" in modal.message
        await pilot.press("n")
        await pilot.pause()
        assert not screen.busy and creation.calls == 0 and not script.calls
        # "Create it": the environment, then the export.
        await pilot.press("f5")
        await pilot.pause()
        await pilot.press("y")
        await wait_until(lambda: screen.result is not None)
        await settle(pilot)
        assert creation.calls == 1 and len(script.calls) == 1
        stages = screen.query_one(StageList)
        assert next(iter(stages.rows)) == "export-env"
        assert stages.rows["export-env"].summary == "export environment ready (scripted)"
        assert set(stages.states().values()) == {"done"}
        log = list(screen.query_one(Log).lines)
        assert "installing litert-torch" in log
        assert screen.step == 3


async def test_try_it_asks_the_chosen_bundle(workspace: Path) -> None:
    write_two_runs(workspace)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_export(pilot)
        scripted(screen, ScriptedExport())
        replies = ScriptedReplies()
        screen.replies_fn = replies
        await pilot.press("f5")
        await wait_until(lambda: screen.result is not None)
        await settle(pilot)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert screen.step == 4 and app.focused is screen.query_one("#try-prompt", Input)
        await pilot.press(*"Capital of France?", "enter")
        await wait_until(lambda: len(screen.replies) == 1)
        await settle(pilot)
        bundle, prompt, reply = screen.replies[0]
        assert bundle.endswith(".task") and prompt == "Capital of France?"
        assert reply == "Paris is the capital of France. (.task)"
        assert replies.calls[0]["max"] == 128
        assert replies.calls[0]["bundle"].suffix == ".task"
        transcript = rendered(screen.query_one("#try-replies", Static))
        assert "you  Capital of France?" in transcript
        assert "task Paris is the capital of France. (.task)" in transcript
        # F3: the .litertlm answers next.
        await pilot.press("f3", *"Again", "enter")
        await wait_until(lambda: len(screen.replies) == 2)
        assert replies.calls[1]["bundle"].suffix == ".litertlm"
        assert screen.replies[1][2].endswith("(.litertlm)")


async def test_help_lists_the_export_keys(workspace: Path) -> None:
    from gemma_tui.screens.help import HelpScreen

    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await open_export(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        sections = dict(app.screen.sections)
        keys = dict(sections["Export"])
        assert keys["f5"] == "Merge, convert, bundle and verify the checkpoint"
        assert keys["esc"] == "Cancel the running job (asks first)"
        assert "^n" in keys and "^b" in keys and "f3" in keys
        assert "Export wizard" in sections


@pytest.mark.slow
@pytest.mark.skipif(
    find_export_env() is None,
    reason="no export environment (bash scripts/make_export_env.sh, or gemma-tui export-env)",
)
async def test_real_export_of_a_tiny_run_then_try_it(workspace: Path, tmp_path: Path) -> None:
    """The real thing: train the tiny model 2 steps, export its final checkpoint as fp16
    through the TUI (merge, convert, bundle, verify), and ask the .task a question."""
    from pipeline.profiles.io import loads_profile
    from pipeline.training.trainer import train
    from pipeline.workspace import Workspace
    from tests.tiny_run import tiny_profile_toml, write_chat_jsonl

    data = write_chat_jsonl(tmp_path / "chat.jsonl")
    profile = loads_profile(tiny_profile_toml("tiny-export", max_steps=2))
    run = train(profile, data=str(data), workspace=Workspace(workspace))
    assert run.status == "finished"
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_export(pilot)
        assert screen.run_dir == run.run_dir
        assert screen.source is not None and screen.source.final
        assert screen.source.model_source == "tiny"
        await pilot.press("ctrl+n")
        await pilot.press("up")  # from dynamic_int8 to fp16
        await pilot.pause()
        assert screen.quant == "fp16"
        screen.query_one("#opt-prefill", Input).value = "32"
        screen.query_one("#opt-kv", Input).value = "128"
        screen.query_one("#opt-max-new", Input).value = "8"
        await pilot.pause()
        assert screen.options is not None and screen.options.kv_len == 128
        await pilot.press("f5")
        await wait_until(lambda: screen.busy)
        await wait_until(lambda: not screen.busy, timeout=240)
        await settle(pilot)
        result = screen.result
        assert result is not None, plain(screen.query_one("#export-status", Static))
        assert result.status == "ok"
        states = screen.query_one(StageList).states()
        assert states == {name: "done" for name in export_stages(screen.options)}
        verdict = plain(screen.query_one("#report-verdict", Static))
        assert verdict.startswith("✓ Ready · verification passed")
        assert "PASSED" in screen.query_one("#report-md").source  # type: ignore[attr-defined]
        for name, size in result.files.items():
            assert (result.out_dir / name).stat().st_size == size > 1_000_000
        assert {Path(n).suffix for n in result.files} == {".task", ".litertlm"}
        # Try it: the .task answers (the tiny model is untrained: any text will do).
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert screen.step == 4
        await pilot.press(*"What is 2 plus 2?", "enter")
        await wait_until(lambda: len(screen.replies) == 1, timeout=120)
        bundle, _, reply = screen.replies[0]
        assert bundle.endswith(".task")
        assert reply.strip() and not reply.startswith("(failed")


async def test_stage_list_follows_the_pipeline_where_the_plan_is_out_of_date() -> None:
    from textual.app import App, ComposeResult

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield StageList()

    app = One()
    async with app.run_test():
        stages = app.query_one(StageList)
        stages.plan(["tools", "merge", "verify"])
        for name in ("tools", "merge"):
            assert stages.start(name, "detail")
            assert stages.done(name, f"{name} done", 1.0)
        assert stages.start("reference", "4 prompts")  # a stage the plan did not have
        assert list(stages.rows) == ["tools", "merge", "reference", "verify"]
        assert not stages.start("weights")  # a loader sub-stage: the log's business
        stages.done("reference", "replies", 2.0)
        stages.finish()
        assert stages.states() == {
            "tools": "done", "merge": "done", "reference": "done", "verify": "skipped"
        }  # fmt: skip
