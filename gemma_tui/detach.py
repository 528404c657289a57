"""Training runs that outlive the TUI and the SSH session: ``launch_detached(...)``.

A detached run is an ordinary ``gemma-tui train`` process (``python -m gemma_tui train``)
started in a new session, with no controlling terminal (so no SIGHUP when the terminal or
the SSH connection goes away), stdin from /dev/null, and its stdout and stderr appended to
``<run>/console.txt``. Everything else about it is in its run folder, as for any run:
``run.json`` (written here with the child's pid before this returns, so the runs list shows
it "running" at once), ``log.txt``, ``metrics.jsonl``, checkpoints. Follow it with
``gemma-tui runs`` or the TUI's Runs screen; stop it with ``gemma-tui stop RUN`` (a stop
request file, :func:`pipeline.training.runs.request_stop`).

Nothing heavy is imported here (no jax or keras): the TUI calls this from a worker thread.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import TrainingError
from pipeline.profiles.schema import Profile
from pipeline.training import runs
from pipeline.workspace import ENV_VAR, Workspace

STARTUP_WAIT_S = 2.0
"""How long :func:`launch_detached` watches the child for an early failure."""

TAIL_LINES = 15
"""Lines of console.txt quoted when the child fails at once."""


@dataclass(frozen=True, slots=True)
class DetachedRun:
    run_dir: Path
    pid: int
    console_log: Path
    """``<run_dir>/console.txt``: the child's stdout and stderr (appended)."""


def apply_max_steps(profile: Profile, steps: int) -> Profile:
    """``profile`` trained for exactly ``steps`` optimizer steps (``train.epochs`` dropped;
    a warmup as long as the run is shortened to ``steps - 1``)."""
    train = profile.train
    warmup = train.warmup_steps
    if warmup is not None and warmup >= steps:
        warmup = steps - 1
    return dataclasses.replace(
        profile,
        train=dataclasses.replace(train, max_steps=steps, epochs=None, warmup_steps=warmup),
    )


def launch_detached(
    *,
    profile: Profile | str | os.PathLike[str] | None = None,
    data: str | None = None,
    model: str | None = None,
    resume: str | os.PathLike[str] | None = None,
    max_steps: int | None = None,
    workspace: Workspace | None = None,
    devices: str | None = None,
) -> DetachedRun:
    """Start a training run in the background and return at once (after a ~2 s look).

    A new run: ``profile`` is a :class:`Profile` (e.g. edited in the TUI and never saved) or
    a shipped profile's name or a .toml path; ``data``, ``model`` and ``max_steps`` override
    its values. The run folder is made here (``runs/<profile>-<date>-<time>/``) with the
    resolved ``profile.toml`` in it. A resumed run: ``resume`` is a run name or folder;
    ``data`` and ``model`` as for ``gemma-tui train --resume`` (the profile and the length
    are the run's own); ``devices`` overrides its ``train.devices`` (``--devices``).

    Raises (before anything is started):
        ProfileError: no such profile, or a bad one.
        TrainingError: no data, a missing data file, a bad ``max_steps``; a run to resume that
            does not exist, has no checkpoint, or is being written by another process (the
            message names it). Also when the child exits with an error within the first
            ~2 s (the message quotes the end of its console.txt).
    """
    ws = workspace or Workspace.default()
    if resume is not None:
        rdir, argv, placeholder = _prepare_resume(resume, data, model, profile, max_steps, ws)
        if devices is not None:
            argv += ["--devices", str(devices)]
        return _launch(rdir, argv, ws, placeholder)
    rdir, argv, placeholder = _prepare_new(profile, data, model, max_steps, ws)
    try:
        return _launch(rdir, argv, ws, placeholder)
    except TrainingError:
        if not (rdir / runs.RUN_JSON).exists():  # nothing was started: leave no empty run
            shutil.rmtree(rdir, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- preparing


_Placeholder = Callable[[int], runs.RunRecord]
"""The run.json to write once the child's pid is known."""


def _check_data(data: str) -> str:
    """``data`` as an absolute path (the child may resume later from anywhere); a glob is
    kept as given but made absolute too."""
    path = Path(data).expanduser()
    glob = any(c in data for c in "*?[")
    if not glob and not path.exists():
        raise TrainingError(
            f"training data not found: {data}",
            hint=f"Check the path (relative to {os.getcwd()}).",
        )
    return str(path.absolute())


def _check_max_steps(max_steps: int | None) -> None:
    if max_steps is not None and (isinstance(max_steps, bool) or max_steps < 1):
        raise TrainingError(f"max_steps must be at least 1, got {max_steps}")


def _prepare_new(
    profile: Profile | str | os.PathLike[str] | None,
    data: str | None,
    model: str | None,
    max_steps: int | None,
    ws: Workspace,
) -> tuple[Path, list[str], _Placeholder]:
    from pipeline.profiles.io import load_profile, save_profile
    from pipeline.training.trainer import new_run_profile

    if profile is None:
        raise TrainingError(
            "a new run needs a profile",
            hint="Pass a profile (a shipped name, a .toml file), or resume a run.",
        )
    _check_max_steps(max_steps)
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    if max_steps is not None:
        profile = apply_max_steps(profile, max_steps)
    profile = new_run_profile(profile, data=data, model=model)
    data = _check_data(str(profile.data.train_path))
    profile = dataclasses.replace(profile, data=dataclasses.replace(profile.data, train_path=data))
    rdir = runs.new_run_dir(ws, profile.name).absolute()
    try:
        toml = save_profile(profile, rdir / runs.PROFILE_TOML)
    except BaseException:
        shutil.rmtree(rdir, ignore_errors=True)
        raise
    argv = ["train", "--profile", str(toml), "--run-dir", str(rdir), "--data", data]
    if model is not None:
        argv += ["--model", model]
    if max_steps is not None:
        argv += ["--max-steps", str(max_steps)]
    final = profile

    def placeholder(pid: int) -> runs.RunRecord:
        return runs.RunRecord(
            status="running",
            pid=pid,
            profile=final.name,
            model=final.model.source,
            data=data,
            total_steps=final.train.max_steps or 0,
        )

    return rdir, argv, placeholder


def _prepare_resume(
    resume: str | os.PathLike[str],
    data: str | None,
    model: str | None,
    profile: object,
    max_steps: int | None,
    ws: Workspace,
) -> tuple[Path, list[str], _Placeholder]:
    from pipeline.profiles.io import load_profile
    from pipeline.training.checkpoint import latest_checkpoint

    rdir = runs.resolve_run(resume, ws).absolute()
    _refuse_if_running(rdir)
    if profile is not None:
        raise TrainingError(
            f"the run {rdir.name} resumes with its own profile ({rdir / runs.PROFILE_TOML})",
            hint="Leave the profile out, or start a new run with it.",
        )
    if max_steps is not None:
        _check_max_steps(max_steps)
        raise TrainingError(
            f"the run {rdir.name} resumes to the length it was started with",
            hint="Leave max_steps out, or start a new run.",
        )
    if not (rdir / runs.PROFILE_TOML).is_file():
        raise TrainingError(
            f"{rdir} has no profile.toml: it is not a gemma-tui run directory",
            hint="Pick a folder listed by `gemma-tui runs`.",
        )
    own = load_profile(rdir / runs.PROFILE_TOML)
    if model is not None and model != own.model.source:
        raise TrainingError(
            f"the run {rdir.name} was trained on model {own.model.source!r}, not {model!r}; "
            "a run resumes with its own model",
            hint="Drop --model, or start a new run on the other model.",
        )
    if latest_checkpoint(rdir) is None:
        raise TrainingError(
            f"{rdir} has no checkpoint to resume from",
            hint="Start a new run; a run saves its first checkpoint at train.checkpoint_every.",
        )
    if data is not None:
        data = _check_data(data)
    argv = ["train", "--resume", str(rdir)]
    if data is not None:
        argv += ["--data", data]
    if model is not None:
        argv += ["--model", model]
    try:
        before: runs.RunRecord | None = runs.read_run_record(rdir)
    except TrainingError:
        before = None

    def placeholder(pid: int) -> runs.RunRecord:
        if before is None:
            return runs.RunRecord(
                pid=pid,
                profile=own.name,
                model=own.model.source,
                data=data or own.data.train_path or "",
            )
        return before.updated_now(status="running", pid=pid, host=socket.gethostname(), error=None)

    return rdir, argv, placeholder


def _refuse_if_running(rdir: Path) -> None:
    """Raise TrainingError naming the process that writes (or is starting to write) the run."""
    if runs.is_locked(rdir):
        owner = runs.lock_owner(rdir)
    else:
        summary = runs.summarize_run(rdir)
        if not summary.status.startswith("running"):
            return
        owner = f"process {summary.pid}" + (f" on {summary.host}" if summary.host else "")
    raise TrainingError(
        f"Run {rdir.name} is in use by {owner}: two processes never write the same run.",
        hint=f"Wait for it to end, or stop it first: gemma-tui stop {rdir.name}",
    )


# --------------------------------------------------------------------------- launching


def _child_env(ws: Workspace) -> dict[str, str]:
    env = {**os.environ, ENV_VAR: str(ws.root.expanduser().absolute()), "PYTHONUNBUFFERED": "1"}
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():  # a source checkout: let `-m gemma_tui` find it
        paths = [str(checkout), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _launch(
    rdir: Path, argv: Sequence[str], ws: Workspace, placeholder: _Placeholder
) -> DetachedRun:
    console = rdir / runs.CONSOLE_TXT
    command = [sys.executable, "-m", "gemma_tui", *argv]
    # Hold the run's lock while starting the child and writing its run.json, so two
    # launchers cannot both start one; the child takes the lock over when it starts
    # training (it retries for a moment; its Python start-up alone takes longer).
    with runs.RunLock(rdir):
        runs.clear_stop_request(rdir)  # one left from before is not meant for this process
        try:
            with console.open("ab") as out:
                header = f"\n=== {runs.now_iso()} gemma-tui {shlex.join(argv)}\n"
                out.write(header.encode("utf-8"))
                out.flush()
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    cwd=os.getcwd(),
                    env=_child_env(ws),
                )
        except OSError as error:
            raise TrainingError(
                f"Cannot start the training process: {error.strerror or error}.",
                hint=f"Check that {sys.executable} runs and {rdir} is writable.",
            ) from error
        try:
            runs.write_run_record(rdir, placeholder(proc.pid))
        except TrainingError:
            proc.terminate()  # SIGTERM: the child stops as soon as it can
            raise
    _watch_start(proc, rdir, console)
    # Reap the child when it ends while this process lives on (the TUI); if this process
    # ends first, init does.
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    return DetachedRun(run_dir=rdir, pid=proc.pid, console_log=console)


def _watch_start(proc: subprocess.Popen[bytes], rdir: Path, console: Path) -> None:
    """Wait up to STARTUP_WAIT_S for an early exit; raise TrainingError if the child failed."""
    deadline = time.monotonic() + STARTUP_WAIT_S
    while (code := proc.poll()) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if code is None or code == 0:
        return
    tail = console_tail(console)
    try:
        record = runs.read_run_record(rdir)
    except TrainingError:
        record = None
    if record is not None and record.status == "running" and record.pid == proc.pid:
        last = tail.strip().splitlines()[-1] if tail.strip() else f"exit code {code}"
        runs.write_run_record(rdir, record.updated_now(status="failed", error=last))
    raise TrainingError(
        f"the training process exited at once (exit code {code}):\n{tail}".rstrip(),
        hint=f"Its whole output is in {console}.",
    )


def console_tail(console: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of the latest launch's output in console.txt."""
    try:
        text = console.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    start = text.rfind("\n=== ")
    latest = text[start + 1 :] if start >= 0 else text
    body = [line for line in latest.splitlines()[1:] if line.strip()]
    return "\n".join(body[-lines:])
