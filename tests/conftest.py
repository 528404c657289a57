"""Shared fixtures.

Third-party datasets live outside the project, in ``../shared/datasets`` beside the checkout
(or where ``GEMMA_TUI_SHARED_DATASETS`` points); they are never copied into the repository.

The oracle interpreter (HF transformers + PEFT on CPU torch) is ``.venv-oracle/bin/python``
beside the repository (made by ``bash scripts/make_oracle_env.sh``) or where
``GEMMA_TUI_ORACLE_PYTHON`` points; tests that need it take the ``oracle_python`` fixture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "pipeline" / "data" / "samples"


def _shared_datasets() -> Path:
    env = os.environ.get("GEMMA_TUI_SHARED_DATASETS")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    path = _shared_datasets()
    if not (path / "alpaca_en_demo.json").is_file():
        pytest.skip(f"shared datasets not found at {path} (set GEMMA_TUI_SHARED_DATASETS)")
    return path


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


ORACLE_ENV_VAR = "GEMMA_TUI_ORACLE_PYTHON"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "oracle: compares against HF transformers in the oracle interpreter "
        "(bash scripts/make_oracle_env.sh)",
    )


@pytest.fixture(scope="session")
def oracle_python() -> Path:
    """The oracle interpreter; the test is skipped when it does not exist."""
    env = os.environ.get(ORACLE_ENV_VAR)
    path = Path(env).expanduser() if env else REPO / ".venv-oracle" / "bin" / "python"
    if not path.is_file():
        pytest.skip(
            f"no oracle environment at {path}: run `bash scripts/make_oracle_env.sh` "
            f"(or set {ORACLE_ENV_VAR})"
        )
    return path


@pytest.fixture(scope="session")
def yes_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """(workspace, run folder) of the tiny model taught to answer "Yes." and stop
    (:func:`tests.tiny_run.train_yes_run`; trained once per test session)."""
    from tests.tiny_run import train_yes_run

    return train_yes_run(tmp_path_factory.mktemp("yes-run"))


@pytest.fixture(scope="session")
def export_env() -> Any:
    """The export environment; the test is skipped when it does not exist."""
    from pipeline.export.env import find_export_env

    env = find_export_env()
    if env is None:
        pytest.skip("no export environment: run `bash scripts/make_export_env.sh`")
    return env


YES_EXPORT = {"prefill_lens": (32,), "kv_len": 128, "max_new_tokens": 12}


@pytest.fixture(scope="session")
def yes_export(
    export_env: Any, yes_run: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The "Yes." run exported in float32 as .task, .litertlm and .tflite, verified; the
    export folder (outside the run's workspace, so export tests cannot replace it)."""
    from pipeline.export.job import ExportOptions, export_run

    ws, run_dir = yes_run
    out = tmp_path_factory.mktemp("yes-export") / "tiny-run-final-f32"
    options = ExportOptions(quant="none", formats=("task", "litertlm", "tflite"), **YES_EXPORT)  # type: ignore[arg-type]
    result = export_run(run_dir, options=options, workspace=ws, out_dir=out)
    assert result.status == "ok", result.report and result.report.summary()
    return out
