"""Detached runs (`gemma-tui train --detach`, :func:`gemma_tui.detach.launch_detached`) and stop
requests (`gemma-tui stop`, :func:`pipeline.training.runs.request_stop`), on real processes
and the tiny model on the CPU.

One detached run goes through its life, a step per fixture: launched (the launching process
exits at once, the run goes on in a session of its own; a second writer is refused), stopped
with ``gemma-tui stop --wait``, resumed detached to its end. The tests check what each step
left. Besides: errors found before anything is started, a child that dies at once, and the
trainer honouring a stop request file in-process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gemma_tui import detach
from gemma_tui.detach import launch_detached
from pipeline.errors import ProfileError, TrainingError
from pipeline.training.runs import (
    STOP_FILE,
    RunRecord,
    list_runs,
    read_run_record,
    request_stop,
    write_run_record,
)
from pipeline.workspace import Workspace
from tests.conftest import REPO
from tests.tiny_run import tiny_profile_toml, write_chat_jsonl

TOTAL = 300
"""Steps of the detached run: long enough to watch it and stop it part way (about 0.05 s a
step on two busy cores), short enough to resume to the end in seconds."""
START_TIMEOUT = 240.0
"""Seconds for a process to load the model, compile the step and write its first rows."""


def profile_toml(name: str) -> str:
    return tiny_profile_toml(
        name, learning_rate=1e-3, warmup_steps=1, max_steps=TOTAL, eval_every=0,
        checkpoint_every=0, eval_fraction=0.1, batch_size=1, sequence_length=32,
    )  # fmt: skip


def link_caches(root: Path) -> Path:
    """A workspace whose caches (the embedded GGUF the tokenizer comes from, the tokenizer
    proto) are links to the default workspace's, so nothing is rebuilt."""
    from pipeline.models.embedded import MODELS_SUBDIR
    from pipeline.models.tokenizer import CACHE_SUBDIR

    shared = Workspace.default().cache_dir
    ws = Workspace(root)
    ws.cache_dir.mkdir(parents=True)
    for sub in (MODELS_SUBDIR, CACHE_SUBDIR):
        (shared / sub).mkdir(parents=True, exist_ok=True)
        (ws.cache_dir / sub).symlink_to(shared / sub, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_caches(tmp_path_factory.mktemp("detach") / "ws")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chat_jsonl(tmp_path_factory.mktemp("detach-data") / "chat.jsonl")


def cli(workspace: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `gemma-tui ARGS` to its end (the run it may start is not its child for long)."""
    env = {**os.environ, "GEMMA_TUI_WORKSPACE": str(workspace), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "gemma_tui", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def train_steps(run: Path) -> list[int]:
    """The steps of metrics.jsonl's train rows written so far (a partial line is skipped)."""
    path = run / "metrics.jsonl"
    steps = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("type") == "train":
                steps.append(row["step"])
    return steps


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(what: str, ready: Callable[[], bool], timeout: float, run: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            console = (run / "console.txt").read_text(errors="replace")[-3000:]
            pytest.fail(f"no {what} after {timeout:.0f} s; console.txt:\n{console}")
        time.sleep(0.05)


@dataclass
class Launched:
    run: Path
    pid: int
    result: subprocess.CompletedProcess[str]
    seconds: float
    listed: Any
    """The run's RunSummary right after the launching process returned."""
    rows_when_parent_gone: int
    rows_later: int
    refused: TrainingError | None
    refused_cli: subprocess.CompletedProcess[str]
    record_after_refusal: RunRecord


@pytest.fixture(scope="module")
def launched(workspace: Path, data_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """`gemma-tui train --detach`, then two more train rows after it returned, then two
    attempts at a second writer while the run goes on."""
    profile = tmp_path_factory.mktemp("detach-profile") / "detached.toml"
    profile.write_text(profile_toml("detached"))
    started = time.monotonic()
    result = cli(workspace, "train", "--profile", str(profile), "--data", str(data_file),
                 "--detach")  # fmt: skip
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    listed = list_runs(Workspace(workspace))
    assert len(listed) == 1, listed
    run = listed[0].path
    pid = listed[0].pid
    try:
        rows_then = len(train_steps(run))
        wait_until("train rows", lambda: len(train_steps(run)) >= max(rows_then + 1, 2),
                   START_TIMEOUT, run)  # fmt: skip
        rows_later = len(train_steps(run))
        try:
            launch_detached(resume=run.name, workspace=Workspace(workspace))
            refused = None
        except TrainingError as error:
            refused = error
        refused_cli = cli(workspace, "train", "--resume", run.name, "--detach")
        yield Launched(
            run=run, pid=pid, result=result, seconds=seconds, listed=listed[0],
            rows_when_parent_gone=rows_then, rows_later=rows_later, refused=refused,
            refused_cli=refused_cli, record_after_refusal=read_run_record(run),
        )  # fmt: skip
    finally:
        kill_if_ours(pid, run)


def kill_if_ours(pid: int, run: Path) -> None:
    """A failed test leaves no run behind: kill the run's process (checked by its command
    line, so a reused pid is left alone)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if str(run) in " ".join(process.cmdline()):
            os.kill(pid, signal.SIGKILL)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        pass


@dataclass
class Stopped:
    result: subprocess.CompletedProcess[str]
    step: int


@pytest.fixture(scope="module")
def stopped(launched: Launched, workspace: Path) -> Stopped:
    """`gemma-tui stop RUN --wait` on the launched run, and its process gone."""
    result = cli(workspace, "stop", launched.run.name, "--wait", "--timeout", "120", timeout=180)
    wait_until("exit of the run's process", lambda: not alive(launched.pid), 60, launched.run)
    return Stopped(result, read_run_record(launched.run).step)


@dataclass
class Resumed:
    result: subprocess.CompletedProcess[str]
    pid: int


@pytest.fixture(scope="module")
def resumed(stopped: Stopped, launched: Launched, workspace: Path) -> Iterator[Resumed]:
    """`gemma-tui train --resume RUN --detach` on the stopped run (with a stale stop request
    left in it), waited for to the end."""
    run = launched.run
    request_stop(run, reason="left over")  # it must not stop the resumed run
    result = cli(workspace, "train", "--resume", run.name, "--detach")
    assert result.returncode == 0, result.stderr[-3000:]
    pid = read_run_record(run).pid
    try:
        wait_until("end of the resumed run",
                   lambda: read_run_record(run).status != "running" and not alive(pid),
                   START_TIMEOUT, run)  # fmt: skip
        yield Resumed(result, pid)
    finally:
        kill_if_ours(pid, run)


# --------------------------------------------------------------------------- the life of a run


@pytest.mark.slow
def test_detach_returns_at_once_and_the_run_goes_on_alone(
    launched: Launched, data_file: Path
) -> None:
    run, out = launched.run, launched.result.stdout
    assert launched.seconds < 20, f"the launch took {launched.seconds:.1f} s"
    assert f"in the background (pid {launched.pid})" in out
    assert str(run) in out and f"tail -f {run / 'log.txt'}" in out
    assert "gemma-tui runs" in out and "Runs screen (key 3)" in out
    assert f"gemma-tui stop {run.name}" in out
    assert "Memory estimate:" in launched.result.stderr
    # Listed as running by the child's pid as soon as the launch returned.
    listed = launched.listed
    assert listed.status == "running" and listed.pid == launched.pid != os.getpid()
    assert (listed.profile, listed.model, listed.data) == ("detached", "tiny", str(data_file))
    assert listed.total_steps == TOTAL
    # The launching process has exited; the run kept writing rows afterwards, from a session
    # of its own, with no terminal, reading nothing.
    assert launched.rows_later > launched.rows_when_parent_gone
    assert alive(launched.pid)
    assert os.getsid(launched.pid) == launched.pid != os.getsid(0)
    import psutil

    assert psutil.Process(launched.pid).terminal() is None
    assert os.readlink(f"/proc/{launched.pid}/fd/0") == "/dev/null"
    console = (run / "console.txt").read_text()
    assert "=== " in console and f"train --profile {run / 'profile.toml'}" in console
    assert f"Run {run}" in console  # the child's own output


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_owner(launched: Launched) -> None:
    owner = f"in use by process {launched.pid} on {socket.gethostname()}"
    assert launched.refused is not None and owner in launched.refused.message
    assert f"gemma-tui stop {launched.run.name}" in (launched.refused.hint or "")
    assert launched.refused_cli.returncode == 2, launched.refused_cli.stderr[-3000:]
    assert owner in launched.refused_cli.stderr
    # The refused launches changed nothing: the run is still the first process's.
    assert launched.record_after_refusal.pid == launched.pid
    assert launched.record_after_refusal.status == "running"


@pytest.mark.slow
def test_stop_wait_ends_the_run_stopped_with_a_checkpoint(
    stopped: Stopped, launched: Launched, data_file: Path
) -> None:
    from pipeline.profiles import load_profile
    from pipeline.training.checkpoint import latest_checkpoint, load_checkpoint

    run, step = launched.run, stopped.step
    out = stopped.result.stdout
    assert stopped.result.returncode == 0, stopped.result.stderr[-3000:]
    assert f"Asked run {run.name} (process {launched.pid} on {socket.gethostname()})" in out
    assert f"Run {run.name}: stopped at step {step}/{TOTAL}" in out
    record = read_run_record(run)
    assert record.status == "stopped" and record.error is None
    assert launched.rows_later <= step < TOTAL
    assert train_steps(run) == list(range(1, step + 1))
    latest = latest_checkpoint(run)
    assert latest == run / "checkpoints" / f"step-{step:06d}"
    assert load_checkpoint(latest).step == step
    assert not (run / "final").exists()
    assert not (run / STOP_FILE).exists()  # answered: removed by the run
    console = (run / "console.txt").read_text()
    assert f"stopped at step {step} by a stop request from process" in console
    assert "(gemma-tui stop)" in console
    # The child saved the resolved profile over the launcher's placeholder run.json.
    profile = load_profile(run / "profile.toml")
    assert profile.train.max_steps == TOTAL and profile.model.source == "tiny"
    assert profile.data.train_path == str(data_file)


@pytest.mark.slow
def test_resume_detached_runs_from_the_checkpoint_to_the_end(
    resumed: Resumed, stopped: Stopped, launched: Launched
) -> None:
    run, step = launched.run, stopped.step
    assert f"Resumed run {run.name} in the background (pid {resumed.pid})" in resumed.result.stdout
    assert resumed.pid != launched.pid
    record = read_run_record(run)
    assert record.status == "finished" and record.step == TOTAL and record.error is None
    assert train_steps(run) == list(range(1, TOTAL + 1))  # each step once
    assert (run / "final" / "adapter_model.safetensors").is_file()
    assert (run / "checkpoints" / f"step-{step:06d}").is_dir()
    assert f"Resuming {run.name} at step {step} of {TOTAL}" in (run / "log.txt").read_text()
    assert not (run / STOP_FILE).exists()


@pytest.mark.slow
def test_stop_of_a_run_that_is_not_running_exits_1(
    resumed: Resumed, launched: Launched, workspace: Path
) -> None:
    result = cli(workspace, "stop", launched.run.name)
    assert result.returncode == 1
    assert f"Run {launched.run.name} is not running (status: finished)" in result.stderr
    assert "nothing to stop" in result.stderr
    assert not (launched.run / STOP_FILE).exists()
    result = cli(workspace, "stop", "no-such-run")
    assert result.returncode == 2 and "No run 'no-such-run'" in result.stderr


# --------------------------------------------------------------------------- failures


def test_errors_before_anything_starts(tmp_path: Path, data_file: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    good = tmp_path / "good.toml"
    good.write_text(profile_toml("good"))
    with pytest.raises(ProfileError, match="cpu-smoke"):  # did you mean ...
        launch_detached(profile="cpu-smok", data=str(data_file), workspace=ws)
    with pytest.raises(TrainingError, match=r"training data not found: nope\.jsonl"):
        launch_detached(profile=good, data="nope.jsonl", workspace=ws)
    with pytest.raises(TrainingError, match="max_steps must be at least 1, got 0"):
        launch_detached(profile=good, data=str(data_file), max_steps=0, workspace=ws)
    with pytest.raises(TrainingError, match="no training data given"):
        launch_detached(profile="cpu-smoke", workspace=ws)
    with pytest.raises(TrainingError, match="needs a profile"):
        launch_detached(data=str(data_file), workspace=ws)
    with pytest.raises(TrainingError, match="No run 'nope'"):
        launch_detached(resume="nope", workspace=ws)
    assert not ws.runs_dir.exists() or list(ws.runs_dir.iterdir()) == []  # nothing made

    run = ws.runs_dir / "no-checkpoint"
    run.mkdir(parents=True)
    (run / "profile.toml").write_text(profile_toml("no-checkpoint"))
    write_run_record(run, RunRecord(status="stopped", profile="no-checkpoint"))
    with pytest.raises(TrainingError, match="no checkpoint to resume from"):
        launch_detached(resume=run, workspace=ws)
    with pytest.raises(TrainingError, match="resumes with its own profile"):
        launch_detached(resume=run, profile=good, workspace=ws)
    with pytest.raises(TrainingError, match="resumes to the length it was started with"):
        launch_detached(resume=run, max_steps=5, workspace=ws)
    assert read_run_record(run).status == "stopped"  # untouched

    env = {**os.environ, "GEMMA_TUI_WORKSPACE": str(ws.root)}
    result = subprocess.run(
        [sys.executable, "-m", "gemma_tui", "train", "--profile", str(good), "--data",
         str(data_file), "--detach", "--run-dir", str(tmp_path / "r")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "leave --run-dir out" in result.stderr


def test_a_child_that_fails_at_once_is_reported_with_its_output(tmp_path: Path) -> None:
    """A child that exits with an error within the first seconds: the launch raises with the
    end of console.txt, and run.json says the run failed."""
    ws = Workspace(tmp_path / "ws")
    run = ws.runs_dir / "broken"
    run.mkdir(parents=True)
    with pytest.raises(TrainingError) as info:
        detach._launch(run, ["no-such-command"], ws, lambda pid: RunRecord(pid=pid))
    assert "exited at once (exit code 2)" in info.value.message
    assert "invalid choice: 'no-such-command'" in info.value.message
    assert str(run / "console.txt") in (info.value.hint or "")
    record = read_run_record(run)
    assert record.status == "failed" and "invalid choice" in (record.error or "")
    assert list_runs(ws)[0].status == "failed"


# --------------------------------------------------------------------------- the trainer


def test_the_trainer_stops_at_a_stop_request_with_a_checkpoint(
    tmp_path: Path, data_file: Path
) -> None:
    """In-process: a stop request file (written while the run goes) stops it after a step,
    with a checkpoint; a stale one found at the start is removed, not obeyed; a launcher's
    placeholder run.json does not make a new run a resumed one."""
    pytest.importorskip("jax")
    from pipeline.events import Event, RunFinished, StepMetrics
    from pipeline.profiles import load_profile
    from pipeline.training.checkpoint import latest_checkpoint, load_checkpoint
    from pipeline.training.trainer import train

    ws = Workspace(link_caches(tmp_path / "ws"))
    (tmp_path / "p.toml").write_text(profile_toml("in-process"))
    profile = load_profile(tmp_path / "p.toml")
    run = tmp_path / "run"
    run.mkdir()
    write_run_record(run, RunRecord(pid=os.getpid(), profile="placeholder", total_steps=999))
    stale = {"pid": 1, "host": socket.gethostname(), "time": "2020-01-01T00:00:00+00:00",
             "reason": "old", "run_pid": 1, "run_host": socket.gethostname()}  # fmt: skip
    (run / STOP_FILE).write_text(json.dumps(stale))
    events: list[Event] = []
    seen: dict[str, Any] = {}

    def on_event(event: Event) -> None:
        events.append(event)
        if isinstance(event, StepMetrics):
            seen.setdefault("first", (run / STOP_FILE).exists())
            if event.step == 3:
                request_stop(run, reason="test")

    result = train(profile, data=str(data_file), run_dir=run, workspace=ws, on_event=on_event)
    assert seen["first"] is False  # the stale request was gone before the first step
    assert result.status == "stopped" and 3 <= result.step < TOTAL, result
    me = f"by a stop request from process {os.getpid()} on {socket.gethostname()}"
    assert result.message.startswith(f"stopped at step {result.step} {me}")
    assert result.message.endswith("(test)")
    (finished,) = [e for e in events if isinstance(e, RunFinished)]
    assert finished.status == "stopped" and finished.message == result.message
    latest = latest_checkpoint(run)
    assert latest == run / "checkpoints" / f"step-{result.step:06d}"
    assert load_checkpoint(latest).step == result.step
    assert train_steps(run) == list(range(1, result.step + 1))
    assert not (run / STOP_FILE).exists()
    record = read_run_record(run)
    assert record.status == "stopped" and record.step == result.step
    assert record.profile == "in-process" and record.total_steps == TOTAL  # not the placeholder
    assert load_profile(run / "profile.toml").data.train_path == str(data_file)
    assert "Removed a stale stop request" in (run / "log.txt").read_text()

    # A request naming this process as the run's writer, made since it started (a detached
    # run asked to stop while starting), is obeyed before the first step.
    again = tmp_path / "again"
    again.mkdir()
    write_run_record(again, RunRecord(pid=os.getpid(), profile="placeholder"))
    request_stop(again, reason="early")
    result = train(profile, data=str(data_file), run_dir=again, workspace=ws)
    assert result.status == "stopped" and result.step == 0, result
    assert result.message.startswith(f"stopped before the first step {me}")
    assert read_run_record(again).status == "stopped"
    assert not (again / STOP_FILE).exists()
