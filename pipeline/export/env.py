"""The export environment: where it is, whether it works, and making it.

Conversion needs litert-torch, which needs torch and imports TensorFlow; the main environment
must carry neither (the TUI has to start fast, and keras-hub runs without TF here). So the
export tools live in their own virtual environment, made by ``scripts/make_export_env.sh``
(``gemma-tui export-env`` runs it with progress), and :mod:`pipeline.export.worker` runs
there as a subprocess.

Where it is looked for, first match wins:

1. ``$GEMMA_TUI_EXPORT_PYTHON`` (a python executable);
2. ``<project>/.venv-export/bin/python`` (beside ``pyproject.toml`` of this checkout).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ExportError, JobCancelled
from pipeline.events import EventSink, LogLine, StageDone, StopCheck, ignore_event, never_stop

ENV_VAR = "GEMMA_TUI_EXPORT_PYTHON"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding the ``pipeline`` package (and, in a checkout, ``scripts/``)."""
DEFAULT_DIR = PROJECT_ROOT / ".venv-export"
MAKE_SCRIPT = PROJECT_ROOT / "scripts" / "make_export_env.sh"
SIZE_HINT = "about 4.5 GB of disk and 3-6 minutes"
CREATE_COMMAND = "gemma-tui export-env"

REQUIRED_MODULES = (
    "torch",
    "tensorflow",
    "litert_torch",
    "ai_edge_litert",
    "litert_lm",
    "sentencepiece",
    "mediapipe",
)
_CHECK = (
    "import importlib.util, sys\n"
    "def found(m):\n"
    "    try:\n"
    "        return importlib.util.find_spec(m) is not None\n"
    "    except ImportError:\n"
    "        return False\n"
    "missing = [m for m in sys.argv[1:] if not found(m)]\n"
    "if missing: sys.exit('missing: ' + ', '.join(missing))\n"
)
"""Finds the modules without importing them (importing TensorFlow alone takes ~10 s)."""


@dataclass(frozen=True)
class ExportEnv:
    python: Path
    """The environment's python executable."""
    origin: str
    """Where it was found: ``$GEMMA_TUI_EXPORT_PYTHON`` or the default folder."""


def find_export_env() -> ExportEnv | None:
    """The export environment's python if it exists (not checked to work: see
    :func:`check_export_env`)."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return ExportEnv(Path(configured), f"${ENV_VAR}")
    python = DEFAULT_DIR / "bin" / "python"
    if python.exists():
        return ExportEnv(python, str(DEFAULT_DIR))
    return None


def require_export_env() -> ExportEnv:
    """The export environment, or :class:`ExportError` saying how to make it."""
    env = find_export_env()
    if env is None:
        raise ExportError(
            "the export tools (litert-torch, MediaPipe, LiteRT-LM) are not installed",
            hint=f"Run `{CREATE_COMMAND}` once ({SIZE_HINT}); it creates {DEFAULT_DIR}. "
            f"Or point ${ENV_VAR} at the python of an environment that has them.",
        )
    if not env.python.exists():
        raise ExportError(
            f"${ENV_VAR} names {env.python}, which does not exist",
            hint=f"Fix or unset ${ENV_VAR}; `{CREATE_COMMAND}` makes the default environment.",
        )
    return env


def worker_environ() -> dict[str, str]:
    """The environment for a worker subprocess: this checkout first on ``PYTHONPATH`` (so
    ``python -m pipeline.export.worker`` imports this code), unbuffered output, quiet TF."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")  # the converter runs on the CPU
    env.pop("VIRTUAL_ENV", None)
    return env


def check_export_env(env: ExportEnv | None = None, timeout: float = 120.0) -> None:
    """Check that the environment's python runs and has the export tools;
    :class:`ExportError` naming what is missing otherwise."""
    env = env or require_export_env()
    try:
        proc = subprocess.run(
            [str(env.python), "-c", _CHECK, *REQUIRED_MODULES],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=worker_environ(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportError(f"cannot run {env.python}: {exc}") from exc
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["?"]
        raise ExportError(
            f"the export environment at {env.origin} is incomplete: {last[0]}",
            hint=f"Run `{CREATE_COMMAND}` to repair it.",
        )


def create_export_env(
    folder: Path | None = None,
    *,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> Path:
    """Make (or repair) the export environment with ``scripts/make_export_env.sh``,
    streaming its steps as LogLine events. Returns the python path."""
    if not MAKE_SCRIPT.is_file():
        raise ExportError(
            f"{MAKE_SCRIPT} is missing",
            hint="The export environment is made from a checkout of gemma-tui.",
        )
    target = folder or DEFAULT_DIR
    start = time.perf_counter()
    on_event(LogLine(f"Creating the export environment in {target} ({SIZE_HINT})"))
    proc = subprocess.Popen(
        ["bash", str(MAKE_SCRIPT), str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=PROJECT_ROOT,
        start_new_session=True,
    )
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if not line or line.startswith("WARNING: Location"):
            continue
        tail = [*tail[-19:], line]
        if line.startswith("[export-env]") or "ready" in line:
            on_event(LogLine(line.removeprefix("[export-env] ")))
        if should_stop():
            proc.kill()
            proc.wait()
            raise JobCancelled("creating the export environment was cancelled")
    code = proc.wait()
    if code != 0:
        raise ExportError(
            f"creating the export environment failed (exit {code}): " + " | ".join(tail[-3:]),
            hint=f"Check the network access to the package index and the free disk space "
            f"({SIZE_HINT}), then run `{CREATE_COMMAND}` again.",
        )
    on_event(
        StageDone("export-env", f"export environment ready: {target}", time.perf_counter() - start)
    )
    return target / "bin" / "python"
