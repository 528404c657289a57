"""Shared fixtures.

Third-party datasets live outside the project, in ``../shared/datasets`` beside the checkout
(or where ``GEMMA_TUI_SHARED_DATASETS`` points); they are never copied into the repository.
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
