"""File-system path completion for :class:`textual.widgets.Input`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.suggester import Suggester
from textual.widgets import Input

DATASET_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


def complete_path(value: str, *, suffixes: Iterable[str] | None = None) -> str | None:
    """The first entry of ``value``'s folder whose name starts with what was typed.

    ``value`` is completed as typed (``~`` is kept): ``"pipe"`` -> ``"pipeline/"``. Folders
    get a trailing separator so completion can go on inside them. With ``suffixes``, files
    with other suffixes are not offered. Hidden entries are offered only once a ``.`` is typed.
    """
    if not value:
        return None
    folder_part, _, prefix = value.rpartition(os.sep)
    folder = Path(
        os.path.expanduser(folder_part + os.sep if folder_part or value.startswith(os.sep) else ".")
    )
    allowed = tuple(suffixes) if suffixes is not None else None
    try:
        with os.scandir(folder) as entries:
            names: list[tuple[str, bool]] = []
            for entry in entries:
                if not entry.name.startswith(prefix) or entry.name == prefix:
                    continue
                if entry.name.startswith(".") and not prefix.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                if not is_dir and allowed is not None and not entry.name.endswith(allowed):
                    continue
                names.append((entry.name, is_dir))
    except OSError:
        return None
    if not names:
        return None
    name, is_dir = min(names)
    head = value[: len(value) - len(prefix)]
    return head + name + (os.sep if is_dir else "")


class PathSuggester(Suggester):
    """Suggests the completion of a file-system path (case-sensitive, never cached)."""

    def __init__(self, *, suffixes: Iterable[str] | None = DATASET_SUFFIXES) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.suffixes = tuple(suffixes) if suffixes is not None else None

    async def get_suggestion(self, value: str) -> str | None:
        # A slow or network folder must not stall the UI.
        return await asyncio.to_thread(complete_path, value, suffixes=self.suffixes)


class PathInput(Input):
    """An :class:`Input` with path completion; Tab accepts the completion (as → does)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "complete", "Complete path", show=False),
    ]

    def __init__(
        self,
        value: str = "",
        *,
        placeholder: str = "",
        suffixes: Iterable[str] | None = DATASET_SUFFIXES,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(
            value=value,
            placeholder=placeholder,
            suggester=PathSuggester(suffixes=suffixes),
            id=id,
            classes=classes,
        )

    def action_complete(self) -> None:
        if self.cursor_at_end:
            before = self.value
            self.action_cursor_right()
            if self.value != before:
                return
        self.screen.focus_next()
