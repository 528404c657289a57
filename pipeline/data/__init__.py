"""The dataset stage: load, validate, convert, format, deduplicate, measure, split."""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
"""Small datasets of our own, in every format, each with a few deliberately broken rows."""

DEFAULT_SAMPLE = SAMPLES_DIR / "sample_sharegpt.jsonl"
"""What the TUI opens when started with no dataset."""


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
