"""A detached run started from the Train screen, for real (the tiny model in its own
process): it keeps writing after the TUI has quit, a new TUI attaches to it from the Runs
screen and follows it live, stops it, and resumes it detached again."""

from __future__ import annotations

import os
from pathlib import Path

from textual.widgets import Select

from gemma_tui.app import GemmaTuiApp
from gemma_tui.screens.modals import ConfirmModal
from gemma_tui.screens.runs import RunsScreen
from gemma_tui.screens.runs_actions import ResumeModal
from gemma_tui.screens.runs_detail import RunDetailScreen
from gemma_tui.screens.train import TrainScreen
from pipeline.training.runs import list_runs, read_metrics, read_run_record
from tests.tiny_run import write_chat_jsonl
from tests.tui.conftest import wait_until

STEPS = 400
PROFILE = f"""name = "tiny-detached"
[model]
source = "tiny"
dtype = "float32"
[lora]
rank = 4
targets = ["q", "v"]
[train]
batch_size = 1
sequence_length = 32
max_steps = {STEPS}
checkpoint_every = 10
precision = "float32"
loss_chunk_size = 32
"""


def _rows(run_dir: Path) -> int:
    return sum(r["type"] == "train" for r in read_metrics(run_dir / "metrics.jsonl"))


async def test_detached_run_outlives_the_tui_and_a_new_tui_attaches(
    workspace: Path, tmp_path: Path
) -> None:
    profiles = workspace / "profiles"
    profiles.mkdir()
    (profiles / "tiny-detached.toml").write_text(PROFILE)
    data = write_chat_jsonl(tmp_path / "chat.jsonl")

    # 1. The Train screen starts it detached (F6) and follows it.
    app = GemmaTuiApp()
    async with app.run_test(size=(130, 38)) as pilot:
        await pilot.press("2")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, TrainScreen)
        screen.query_one("#profile-select", Select).value = str(profiles / "tiny-detached.toml")
        form = screen.form
        await wait_until(lambda: form.profile is not None and form.profile.name == "tiny-detached")
        form.set_value("data.train_path", str(data))
        await pilot.pause()
        await pilot.press("f6")
        await wait_until(lambda: screen.detached is not None, timeout=30)
        run_dir = screen.detached
        assert run_dir is not None
        monitor = screen.monitor
        await wait_until(lambda: len(monitor.history.train_steps) >= 3, timeout=120)
        assert not screen.busy  # nothing trains in this process
        pid = read_run_record(run_dir).pid
        assert pid != os.getpid()
        assert os.getsid(pid) != os.getsid(0)  # its own session: no SIGHUP from ours
        # Quitting does not ask (nothing runs here) and leaves the run going.
        await pilot.press("q")
    assert not app.is_running

    # 2. It keeps writing with no TUI open.
    seen = _rows(run_dir)
    await wait_until(lambda: _rows(run_dir) >= seen + 5, timeout=60)
    assert read_run_record(run_dir).status == "running"

    # 3. A new TUI lists it as running, opens it, and follows it live.
    app = GemmaTuiApp()
    async with app.run_test(size=(130, 38)) as pilot:
        await pilot.press("3")
        runs_screen = app.screen
        assert isinstance(runs_screen, RunsScreen)
        await wait_until(lambda: runs_screen.selected_run() is not None, timeout=10)
        selected = runs_screen.selected_run()
        assert selected is not None and selected.path == run_dir
        assert selected.status == "running"
        await pilot.press("enter")
        await wait_until(lambda: isinstance(app.screen, RunDetailScreen), timeout=10)
        detail = app.screen
        assert isinstance(detail, RunDetailScreen)
        await wait_until(lambda: len(detail.history.train_steps) >= seen, timeout=30)
        now = len(detail.history.train_steps)
        await wait_until(lambda: len(detail.history.train_steps) >= now + 5, timeout=60)
        # Stop it from here: it asks, then the run checkpoints and ends "stopped".
        await pilot.press("s")
        await wait_until(lambda: isinstance(app.screen, ConfirmModal), timeout=5)
        await pilot.press("y")
        await wait_until(lambda: read_run_record(run_dir).status == "stopped", timeout=60)
        stopped_at = read_run_record(run_dir).step
        assert 0 < stopped_at < STEPS
        await wait_until(lambda: detail.history.train_steps[-1:] == [stopped_at], timeout=10)
        assert detail.history.train_steps == list(range(1, stopped_at + 1))

        # 4. Resume it detached from here: a new process continues from the checkpoint.
        first_pid = read_run_record(run_dir).pid
        await wait_until(lambda: detail.summary.status == "stopped", timeout=10)
        await pilot.press("r")
        await wait_until(lambda: isinstance(app.screen, ResumeModal), timeout=5)
        await pilot.press("d")
        await wait_until(lambda: read_run_record(run_dir).pid != first_pid, timeout=30)
        assert read_run_record(run_dir).status == "running"
        await wait_until(lambda: _rows(run_dir) >= stopped_at + 3, timeout=60)
        await wait_until(lambda: len(detail.history.train_steps) >= stopped_at + 3, timeout=30)
        await pilot.press("s")
        await wait_until(lambda: isinstance(app.screen, ConfirmModal), timeout=5)
        await pilot.press("y")
        await wait_until(lambda: read_run_record(run_dir).status == "stopped", timeout=60)
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert steps == list(range(1, read_run_record(run_dir).step + 1))  # each step once
    assert [r.status for r in list_runs(workspace)] == ["stopped"]
