"""Ctrl+C on a real `gemma-tui train` process (the tiny model on the CPU).

The first SIGINT asks the run to stop after the current step: it saves a checkpoint at the
last completed step, marks the run "stopped" and exits 130, and `train --resume` continues
from that step. A second SIGINT during the stop ends the process quickly, still with 130 and
a usable run folder.

Each process loads the tiny model and compiles the step (about 10 s on two cores); the
workspace (with its tokenizer cache) is shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gemma_tui.cli_train import EXIT_STOPPED
from tests.conftest import REPO
from tests.tiny_run import tiny_profile_toml, write_chat_jsonl

pytestmark = pytest.mark.slow

START_TIMEOUT = 240.0
"""Seconds for a process to load the model, compile the step and write its first rows."""
STOP_TIMEOUT = 60.0
"""Seconds for a process to stop after SIGINT (one step, a checkpoint, interpreter exit)."""


def profile_toml(name: str) -> str:
    return tiny_profile_toml(
        name,
        learning_rate=1e-3,
        warmup_steps=1,
        max_steps=100000,
        eval_every=0,
        checkpoint_every=0,
        eval_fraction=0.1,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("signals") / "ws"


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chat_jsonl(tmp_path_factory.mktemp("signals-data") / "chat.jsonl")


class Train:
    """One `gemma-tui train` process, its stderr in a file."""

    def __init__(self, args: list[str], workspace: Path, log: Path) -> None:
        env = {**os.environ, "GEMMA_TUI_WORKSPACE": str(workspace), "JAX_PLATFORMS": "cpu"}
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gemma_tui", "train", *args],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(
                    f"the run ended (exit {self.proc.returncode}) before {what}:\n"
                    + self.stderr[-3000:]
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout:.0f} s:\n" + self.stderr[-3000:])
            time.sleep(0.05)

    def interrupt(self) -> float:
        self.proc.send_signal(signal.SIGINT)
        return time.monotonic()

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout:.0f} s after SIGINT:\n" + self.stderr[-3000:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def processes() -> Iterator[list[Train]]:
    started: list[Train] = []
    yield started
    for train in started:  # a failed test leaves none behind
        train.kill()


def train_rows(run: Path) -> list[dict[str, Any]]:
    """The train rows of metrics.jsonl written so far (a partial last line is skipped)."""
    path = run / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("type") == "train":
                rows.append(row)
    return rows


def the_run(workspace: Path, name: str) -> Path | None:
    found = sorted((workspace / "runs").glob(f"{name}-*")) if (workspace / "runs").is_dir() else []
    assert len(found) <= 1, found
    return found[0] if found else None


def start_run(
    name: str, workspace: Path, data_file: Path, tmp_path: Path, processes: list[Train]
) -> tuple[Train, Path]:
    """Start a fresh run and wait until metrics.jsonl holds two train rows."""
    profile = tmp_path / f"{name}.toml"
    profile.write_text(profile_toml(name))
    args = ["--profile", str(profile), "--data", str(data_file)]
    train = Train(args, workspace, tmp_path / "1.err")
    processes.append(train)
    train.wait_for(
        "two train rows in metrics.jsonl",
        lambda: (run := the_run(workspace, name)) is not None and len(train_rows(run)) >= 2,
        START_TIMEOUT,
    )
    run = the_run(workspace, name)
    assert run is not None
    return train, run


def check_stopped(run: Path) -> int:
    """A stopped run: run.json says so, and its checkpoint is at the last step in
    metrics.jsonl, loads and holds that step's loss. Returns the step."""
    from pipeline.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "stopped", record
    step = record["step"]
    rows = train_rows(run)
    assert [r["step"] for r in rows] == list(range(1, step + 1))  # each step once, none lost
    assert not (run / "final").exists()  # the run did not reach total_steps
    assert [c.path.name for c in list_checkpoints(run)][-1] == f"step-{step:06d}"
    assert all(c.ok for c in list_checkpoints(run))
    assert not list((run / "checkpoints").glob(".tmp-*"))
    latest = latest_checkpoint(run)
    assert latest is not None and latest == run / "checkpoints" / f"step-{step:06d}"
    ckpt = load_checkpoint(latest)
    assert ckpt.step == step and ckpt.state["total_steps"] == 100000
    assert ckpt.meta.rank == 4 and ckpt.meta.targets == ("q", "v")
    assert len(ckpt.adapter["layers"]) == 6  # the tiny model's blocks
    assert ckpt.state["last_loss"] == pytest.approx(rows[-1]["loss"])
    assert ckpt.profile is not None and ckpt.profile.train.max_steps == 100000
    return step


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(
    workspace: Path, data_file: Path, tmp_path: Path, processes: list[Train]
) -> None:
    train, run = start_run("stop-once", workspace, data_file, tmp_path, processes)
    train.interrupt()
    assert train.wait() == EXIT_STOPPED, train.stderr[-3000:]
    err = train.stderr
    assert "Stopping after this step and saving a checkpoint" in err
    step = check_stopped(run)
    assert f"stopped at step {step}/100000" in err
    assert f"checkpoint step {step} -> {run / 'checkpoints'}" in err
    assert f"Continue with: gemma-tui train --resume {run.name}" in err

    # Resume (--max-steps does not apply to a resumed run: stop it with Ctrl+C again once
    # it has done at least two more steps).
    again = Train(["--resume", run.name], workspace, tmp_path / "2.err")
    processes.append(again)
    again.wait_for(
        f"a train row after step {step + 1}",
        lambda: any(r["step"] > step + 1 for r in train_rows(run)),
        START_TIMEOUT,
    )
    again.interrupt()
    assert again.wait() == EXIT_STOPPED, again.stderr[-3000:]
    err = again.stderr
    assert f"resumed at step {step}" in err
    assert f"Resuming {run.name} at step {step} of 100000" in (run / "log.txt").read_text()
    later = check_stopped(run)  # metrics continue at step + 1, each step once
    assert later >= step + 2
    assert (run / "checkpoints" / f"step-{step:06d}").is_dir()  # the first stop's is kept


def test_second_ctrl_c_during_the_stop_ends_quickly(
    workspace: Path, data_file: Path, tmp_path: Path, processes: list[Train]
) -> None:
    from pipeline.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

    train, run = start_run("stop-twice", workspace, data_file, tmp_path, processes)
    train.interrupt()
    # Python runs the handler between bytecodes: two SIGINTs that arrive while the main
    # thread waits on the device count as one. Send the second once the first was seen.
    train.wait_for("the stop message", lambda: "Stopping after this step" in train.stderr, 30)
    second = train.interrupt()
    assert train.wait() == EXIT_STOPPED, train.stderr[-3000:]
    assert time.monotonic() - second < 15, "the second Ctrl+C did not end the run quickly"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "stopped", record
    # Whatever the second signal interrupted (the last step's read, the checkpoint write),
    # every step done has its metrics row once, no half-written checkpoint is left, and the
    # checkpoint there is at the last step and loads.
    steps = [r["step"] for r in train_rows(run)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2
    assert all(c.ok for c in list_checkpoints(run))
    assert not list(run.glob("**/.tmp-*"))
    latest = latest_checkpoint(run)
    if latest is not None:  # None: the second signal aborted the checkpoint write itself
        ckpt = load_checkpoint(latest)
        assert ckpt.step == steps[-1] >= record["step"]
        assert ckpt.state["last_loss"] == pytest.approx(train_rows(run)[-1]["loss"])
