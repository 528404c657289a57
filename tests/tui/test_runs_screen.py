"""The Runs screen, Pilot-driven, on run folders written for real in a private workspace."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.notifications import Notify
from textual.pilot import Pilot
from textual.widgets import DataTable, Log, Static

from gemma_tui.app import GemmaTuiApp
from gemma_tui.screens.modals import ConfirmModal, ErrorModal
from gemma_tui.screens.runs import RunsScreen
from gemma_tui.screens.runs_actions import ResumeModal
from gemma_tui.screens.runs_detail import RunCompareScreen, RunDetailScreen, RunFiles
from gemma_tui.widgets.run_plots import LossPlot, MemoryPlot
from pipeline.training.runs import (
    GONE,
    STOP_FILE,
    RunLock,
    read_run_record,
    write_run_record,
    write_text_atomic,
)
from tests.conftest import REPO
from tests.tui.conftest import TERMINAL_SIZE, settle, wait_until
from tests.tui.run_folders import dead_pid, train_row, write_run


def runs_screen(app: Any) -> RunsScreen:
    screen = app.get_screen_stack("runs")[0]
    assert isinstance(screen, RunsScreen)
    return screen


async def open_runs(pilot: Pilot[Any]) -> RunsScreen:
    await pilot.press("3")
    screen = runs_screen(pilot.app)
    await wait_until(lambda: screen.listed >= 1)
    await pilot.pause()
    return screen


async def relist(pilot: Pilot[Any], screen: RunsScreen) -> None:
    """Press f5 and wait for the listing it reads."""
    before = screen.listed
    await pilot.press("f5")
    await wait_until(lambda: screen.listed > before)
    await pilot.pause()


def row_texts(screen: RunsScreen) -> dict[str, list[str]]:
    """Each run's cells as plain text, by run name."""
    table = screen.query_one("#runs-table", DataTable)
    rows = {}
    for key in table.rows:
        cells = [(c.plain if isinstance(c, Text) else str(c)).strip() for c in table.get_row(key)]
        rows[cells[1]] = cells
    return rows


def cursor_to(screen: RunsScreen, name: str) -> None:
    table = screen.query_one("#runs-table", DataTable)
    names = [run.name for run in screen.runs]
    table.move_cursor(row=names.index(name), animate=False)


def collect_notes(notes: list[str]) -> Any:
    def hook(message: object) -> None:
        if isinstance(message, Notify):
            notes.append(f"{message.notification.title}: {message.notification.message}")

    return hook


# --------------------------------------------------------------------------- the list


async def test_empty_list_says_how_to_start_a_run(workspace: Path) -> None:
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_runs(pilot)
        text = str(screen.query_one("#runs-empty", Static).render())
        assert "No runs yet" in text
        assert "press 2 for the Train screen" in text
        assert "gemma-tui train --profile P --data FILE [--detach]" in text
        notes: list[str] = []
        app.message_hook = collect_notes(notes)  # type: ignore[attr-defined]
        await pilot.press("enter", "c", "d")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)  # nothing opened, nothing asked


async def test_list_shows_every_status(workspace: Path) -> None:
    write_run(workspace, "a-finished", status="finished", days_ago=4, final=True)
    write_run(workspace, "b-stopped", status="stopped", step=25, total=100, days_ago=3)
    write_run(
        workspace, "c-failed", status="failed", step=12, total=100, days_ago=2, error="NaN loss"
    )
    write_run(workspace, "d-gone", status="running", step=7, total=100, days_ago=1, pid=dead_pid())
    write_run(workspace, "e-running", status="running", step=3, total=100, days_ago=0.01)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_runs(pilot)
        rows = row_texts(screen)
        # Newest first.
        assert [run.name for run in screen.runs] == [
            "e-running",
            "d-gone",
            "c-failed",
            "b-stopped",
            "a-finished",
        ]
        assert rows["a-finished"][2:7] == ["finished", "40/40", "1.5470", "1 h 00 min", "4 d ago"]
        assert rows["b-stopped"][2:4] == ["stopped", "25/100"]
        assert rows["c-failed"][2] == "failed"
        assert rows["d-gone"][2] == GONE
        assert rows["e-running"][2] == "running"
        assert rows["e-running"][6] == "14 min ago"
        assert rows["a-finished"][7] == "cpu-smoke"
        assert rows["a-finished"][8].startswith("Gemma 3")
        assert "5 runs" in str(screen.sub_title) and "1 running" in str(screen.sub_title)


async def test_list_refreshes_by_itself_and_keeps_the_cursor(workspace: Path) -> None:
    for n, name in enumerate(["old", "middle", "new"]):
        write_run(workspace, name, days_ago=3 - n)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_runs(pilot)
        cursor_to(screen, "middle")
        assert screen.selected_run() is not None
        # A run appears (started elsewhere): no key pressed, the 2 s timer finds it.
        write_run(workspace, "newest", days_ago=0.5)
        await wait_until(lambda: any(run.name == "newest" for run in screen.runs), timeout=6)
        await pilot.pause()
        selected = screen.selected_run()
        assert selected is not None and selected.name == "middle"
        # A status changes: the row is updated in place, the cursor stays.
        path = workspace / "runs" / "middle"
        write_run_record(path, read_run_record(path).updated_now(status="failed"))
        await relist(pilot, screen)
        assert row_texts(screen)["middle"][2] == "failed"
        selected = screen.selected_run()
        assert selected is not None and selected.name == "middle"


# --------------------------------------------------------------------------- one run


async def test_open_a_run_shows_curves_profile_checkpoints_and_log(workspace: Path) -> None:
    write_run(workspace, "done", gpu=True, checkpoints=(20,), final=True)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await open_runs(pilot)
        await pilot.press("enter")
        detail = app.screen
        assert isinstance(detail, RunDetailScreen)
        await wait_until(lambda: detail.loaded)
        await pilot.pause()
        history = detail.history
        assert history.train_steps == list(range(1, 41))
        assert history.eval_steps == [10, 20, 30, 40]
        assert history.has_gpu
        assert detail.query_one(LossPlot).histories == (history,)
        assert detail.query_one(MemoryPlot).history is history
        status = str(detail.query_one("#detail-status", Static).render())
        assert "done · finished · step 40/40" in status and "best eval 1.5470" in status
        table = detail.query_one("#detail-checkpoints", DataTable)
        rows = [[str(cell) for cell in table.get_row(key)] for key in table.rows]
        assert [row[:2] for row in rows] == [["step-000020", "20"], ["final", "40"]]
        assert all(row[2].endswith("KiB") and row[3] == "ok" for row in rows)
        profile = str(detail.query_one("#detail-profile", Static).render())
        assert 'name = "cpu-smoke"' in profile
        log = detail.query_one("#detail-log", Log)
        assert log.lines[-1] == "step 40: loss 1.4470"
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from pipeline.training.runs import MetricsWriter, RunLock, read_run_record, write_run_record

    run, first, last = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    with RunLock(run):
        record = read_run_record(run).updated_now(status="running", pid=os.getpid())
        write_run_record(run, record)
        (run / "writer.ready").touch()
        while not (run / "go").exists():
            time.sleep(0.01)
        with MetricsWriter(run / "metrics.jsonl") as out, open(run / "log.txt", "a") as log:
            for step in range(first, last + 1):
                out.write({"type": "train", "step": step, "loss": 1.0, "host_rss_bytes": 2**30})
                if step % 25 == 0:
                    out.write({"type": "eval", "step": step, "loss": 0.9})
                log.write(f"line {step}\\n")
                log.flush()
                if step % 20 == 0:
                    time.sleep(0.05)
        write_run_record(run, record.updated_now(status="finished", step=last))
    """
)


async def test_a_running_run_is_followed_live(workspace: Path) -> None:
    run = write_run(workspace, "live", status="running", step=10, total=300, eval_every=0)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run), "11", "300"], cwd=REPO)
    try:
        await wait_until(lambda: (run / "writer.ready").exists(), timeout=30)
        app = GemmaTuiApp()
        async with app.run_test(size=TERMINAL_SIZE) as pilot:
            screen = await open_runs(pilot)
            assert row_texts(screen)["live"][2] == "running"
            await pilot.press("enter")
            detail = app.screen
            assert isinstance(detail, RunDetailScreen)
            await wait_until(lambda: detail.loaded)
            assert detail.history.train_steps == list(range(1, 11))
            (run / "go").touch()  # the other process writes 290 steps while we watch
            await wait_until(lambda: len(detail.history.train_steps) == 300, timeout=30)
            assert detail.history.train_steps == list(range(1, 301))
            assert detail.history.eval_steps == list(range(25, 301, 25))
            log = detail.query_one("#detail-log", Log)
            await wait_until(lambda: log.lines[-1:] == ["line 300"])
            assert [line for line in log.lines if line.startswith("line ")] == [
                f"line {n}" for n in range(11, 301)
            ]
            # run.json is read every 2 s: the end of the run shows in the status line.
            status = detail.query_one("#detail-status", Static)
            await wait_until(lambda: "· finished ·" in str(status.render()), timeout=10)
            assert writer.wait(timeout=10) == 0  # its lock was never in our way
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()


def test_run_files_reads_a_rewritten_metrics_file_again(tmp_path: Path) -> None:
    """A resume drops the rows after its checkpoint (the file is replaced) and writes on."""
    run = write_run(tmp_path, "resumed", status="stopped", step=30, total=60, eval_every=10)
    files = RunFiles(run)
    assert files.poll_metrics() == 33
    assert files.poll_metrics() == 0
    kept = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kept = [row for row in kept if row["step"] <= 20]
    write_text_atomic(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
    with (run / "metrics.jsonl").open("a") as out:
        for step in range(21, 26):
            out.write(json.dumps(train_row(step, 60, offset=1.0)) + "\n")
    files.poll_metrics()
    history = files.history
    assert history.train_steps == list(range(1, 26))
    assert history.eval_steps == [10, 20]
    assert history.train_loss[-1] > 1.5  # the resumed run's rows, not the old ones


def test_run_files_shows_the_end_of_a_long_log(tmp_path: Path) -> None:
    run = write_run(tmp_path, "chatty", log=[f"line {n:05d} " + "x" * 90 for n in range(2000)])
    files = RunFiles(run)
    lines = files.poll_log()
    assert 500 < len(lines) < 2000  # the last 64 KiB, from a whole line on
    assert lines[-1].startswith("line 01999") and lines[0].startswith("line ")
    assert files.poll_log() == []
    with (run / "log.txt").open("a") as log:
        log.write("one more\nhalf a li")
    assert files.poll_log() == ["one more"]
    with (run / "log.txt").open("a") as log:
        log.write("ne\n")
    assert files.poll_log() == ["half a line"]


# --------------------------------------------------------------------------- overlay


async def test_compare_two_marked_runs(workspace: Path) -> None:
    write_run(workspace, "first", days_ago=2)
    write_run(workspace, "second", days_ago=1, step=30, total=30, offset=0.3)
    write_run(workspace, "third", days_ago=3)
    notes: list[str] = []
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE, message_hook=collect_notes(notes)) as pilot:
        screen = await open_runs(pilot)
        cursor_to(screen, "second")
        await pilot.press("space")  # marks "second", the cursor moves down to "first"
        await pilot.press("c")
        assert any("Mark two or more runs" in note for note in notes)
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("space")
        assert row_texts(screen)["first"][0] == "●" and row_texts(screen)["second"][0] == "●"
        assert row_texts(screen)["third"][0] == ""
        assert "2 marked" in str(screen.sub_title)
        await pilot.press("c")
        compare = app.screen
        assert isinstance(compare, RunCompareScreen)
        await settle(pilot)
        plot = compare.query_one(LossPlot)
        assert [h.label for h in plot.histories] == ["second", "first"]
        assert [len(h.train_steps) for h in plot.histories] == [30, 40]
        plot.flush()
        drawn = plot.render().plain  # type: ignore[union-attr]
        assert "Loss of 2 runs" in drawn and "second eval" in drawn and "first" in drawn
        table = compare.query_one("#compare-table", DataTable)
        assert table.row_count == 2
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        cursor_to(screen, "second")
        await pilot.press("space")  # unmark
        assert row_texts(screen)["second"][0] == ""


# --------------------------------------------------------------------------- delete


async def test_delete_after_confirming(workspace: Path) -> None:
    keep = write_run(workspace, "keep", days_ago=2)
    gone = write_run(workspace, "doomed", days_ago=1, checkpoints=(10,))
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_runs(pilot)
        cursor_to(screen, "doomed")
        await pilot.press("d")
        modal = app.screen
        assert isinstance(modal, ConfirmModal)
        assert "doomed" in modal.title_text
        await pilot.press("n")  # "No" keeps it
        assert gone.is_dir()
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmModal)
        before = screen.listed
        await pilot.press("y")
        await wait_until(lambda: screen.listed > before)
        await pilot.pause()
        assert not gone.exists() and keep.is_dir()
        assert [run.name for run in screen.runs] == ["keep"]


async def test_delete_is_refused_while_a_process_holds_the_run(workspace: Path) -> None:
    run = write_run(workspace, "busy", status="stopped")
    notes: list[str] = []
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE, message_hook=collect_notes(notes)) as pilot:
        await open_runs(pilot)
        with RunLock(run):
            await pilot.press("d")
            await pilot.pause()
        assert isinstance(app.screen, RunsScreen)  # no question asked
        assert any(note.startswith("Cannot delete") and "busy" in note for note in notes)
        assert run.is_dir()


# --------------------------------------------------------------------------- stop, resume


async def test_stop_a_running_run_writes_a_stop_request(workspace: Path) -> None:
    run = write_run(workspace, "long", status="running", step=5, total=1000, days_ago=0.01)
    write_run(workspace, "older", status="finished", days_ago=1)
    notes: list[str] = []
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE, message_hook=collect_notes(notes)) as pilot:
        screen = await open_runs(pilot)
        cursor_to(screen, "older")
        await pilot.press("s")
        assert any(note.startswith("Nothing to stop") for note in notes)
        cursor_to(screen, "long")
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("n")
        assert not (run / STOP_FILE).exists()
        await pilot.press("s")
        await pilot.press("y")
        await wait_until(lambda: (run / STOP_FILE).exists())
        request = json.loads((run / STOP_FILE).read_text())
        assert request["reason"] == "stopped from the Runs screen"
        await relist(pilot, screen)
        assert row_texts(screen)["long"][2] == "running · stop requested"
        # The trainer stops: the status changes and the notice goes.
        write_run_record(run, read_run_record(run).updated_now(status="stopped"))
        await relist(pilot, screen)
        assert row_texts(screen)["long"][2] == "stopped"


class RecordingApp(GemmaTuiApp):
    """The app, with "resume here" recorded rather than training (the Train screen's job)."""

    def __init__(self) -> None:
        super().__init__()
        self.resumed: list[Path] = []

    async def resume_run_here(self, run_dir: Path) -> None:
        self.resumed.append(run_dir)


async def test_resume_asks_where_and_refuses_finished_or_running_runs(workspace: Path) -> None:
    stopped = write_run(workspace, "paused", status="stopped", step=20, total=40, days_ago=1)
    write_run(workspace, "complete", status="finished", days_ago=2)
    write_run(workspace, "busy", status="running", step=2, total=40, days_ago=0.01)
    notes: list[str] = []
    app = RecordingApp()
    async with app.run_test(size=TERMINAL_SIZE, message_hook=collect_notes(notes)) as pilot:
        screen = await open_runs(pilot)
        for name in ("complete", "busy"):
            cursor_to(screen, name)
            await pilot.press("r")
            assert isinstance(app.screen, RunsScreen)
        assert sum(note.startswith("Cannot resume") for note in notes) == 2
        assert "finished" in notes[0] and "running" in notes[1]

        cursor_to(screen, "paused")
        await pilot.press("r")
        assert isinstance(app.screen, ResumeModal)
        await pilot.press("escape")
        assert app.resumed == []
        await pilot.press("r")
        await pilot.press("h")
        await pilot.pause()
        assert app.resumed == [stopped]


async def test_resume_detached_shows_why_it_cannot_start(workspace: Path) -> None:
    """A stopped run without a checkpoint: launch_detached refuses before starting anything,
    and the screen shows its message."""
    write_run(workspace, "early", status="stopped", step=3, total=40, days_ago=1)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await open_runs(pilot)
        await pilot.press("r")
        await pilot.press("d")
        await wait_until(lambda: isinstance(app.screen, ErrorModal), timeout=30)
        modal = app.screen
        assert isinstance(modal, ErrorModal)
        assert "has no checkpoint to resume from" in modal.report.message
        assert modal.report.hint


async def test_help_lists_the_runs_keys(workspace: Path) -> None:
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        screen = await open_runs(pilot)
        (title, rows), *_ = screen.help_sections()
        assert title == "Runs"
        described = dict(rows)
        for keys in ("⏎", "space", "c", "r", "s", "d", "e", "t"):
            assert keys in described, keys


async def test_palette_commands_reach_the_runs_screen(workspace: Path) -> None:
    write_run(workspace, "only", days_ago=1)
    notes: list[str] = []
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE, message_hook=collect_notes(notes)) as pilot:
        await app.run_action("runs_command('compare')")  # from the Dataset screen
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        assert any("Mark two or more runs" in note for note in notes)
        screen = runs_screen(app)
        await wait_until(lambda: screen.listed >= 1)
        await app.run_action("runs_command('open')")
        detail = app.screen
        assert isinstance(detail, RunDetailScreen)
        await wait_until(lambda: detail.loaded)
        assert detail.history.train_steps[-1] == 40
