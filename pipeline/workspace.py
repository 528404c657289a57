"""Where runs, exports and caches live. Paths and listing only; no other logic.

The workspace root is, in order: the ``GEMMA_TUI_WORKSPACE`` environment variable, the
``workspace/`` folder of a source checkout (next to ``pyproject.toml``), or
``~/.local/share/gemma-tui``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DatasetJob = Literal["convert", "dedup", "split"]

DATASET_OUTPUT_SUFFIXES: dict[DatasetJob, tuple[str, str]] = {
    "convert": (".converted.jsonl", ".converted.rejects.jsonl"),
    "dedup": (".dedup.jsonl", ".dedup.removed.jsonl"),
    "split": (".train.jsonl", ".eval.jsonl"),
}
"""What each dataset job writes by default: (main output, second output)."""

ENV_VAR = "GEMMA_TUI_WORKSPACE"


def default_root() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "workspace").is_dir():
        return checkout / "workspace"
    return Path.home() / ".local" / "share" / "gemma-tui"


@dataclass(frozen=True, slots=True)
class Workspace:
    root: Path

    @classmethod
    def default(cls) -> Workspace:
        return cls(default_root())

    @property
    def cache_dir(self) -> Path:
        """Derived artifacts that can be rebuilt (tokenizer protos, converted presets)."""
        return self.root / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def datasets_dir(self) -> Path:
        """Default home of converted, deduplicated and split datasets."""
        return self.root / "datasets"

    def dataset_outputs(self, source: str | Path, job: DatasetJob) -> tuple[Path, Path]:
        """Where ``job`` writes by default: the datasets folder, named after the input
        (``data/chat.jsonl`` -> ``<workspace>/datasets/chat.converted.jsonl`` and
        ``chat.converted.rejects.jsonl``). The TUI and the CLI use the same names."""
        path = Path(source)
        stem = path.stem if path.suffix else (path.name or "dataset")
        if any(c in stem for c in "*?["):
            stem = "dataset"
        first, second = DATASET_OUTPUT_SUFFIXES[job]
        return self.datasets_dir / f"{stem}{first}", self.datasets_dir / f"{stem}{second}"
