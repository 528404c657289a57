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
