"""The canonical data types every dataset format is converted into.

A *record* is one raw row of an input file (a JSON object, a CSV row, a Parquet row). It is
converted into a :class:`Conversation`: an ordered tuple of :class:`Turn` with one of five
canonical roles. Problems found on the way are :class:`Issue` values that always say which
file, which line (or record index), which field, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "model", "tool_call", "tool_result"]
"""Canonical roles.

``tool_call`` is a model turn that calls a function (ShareGPT ``function_call``, ChatML
``assistant`` with ``tool_calls``); ``tool_result`` is what the function returned (ShareGPT
``observation``, ChatML ``tool``). For alternation, ``user`` and ``tool_result`` are the user
side, ``model`` and ``tool_call`` the model side.
"""

ROLES: tuple[Role, ...] = ("system", "user", "model", "tool_call", "tool_result")
USER_SIDE: frozenset[str] = frozenset({"user", "tool_result"})
MODEL_SIDE: frozenset[str] = frozenset({"model", "tool_call"})

FormatName = Literal["sharegpt", "alpaca", "chatml"]
FORMATS: tuple[FormatName, ...] = ("sharegpt", "alpaca", "chatml")


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    text: str


@dataclass(frozen=True, slots=True)
class RecordRef:
    """Where a record came from."""

    path: str
    """The input file, as the user named it (or as found in a folder or glob)."""
    index: int
    """0-based record index within the file."""
    line: int | None = None
    """1-based line number for JSONL, JSON arrays (line where the record starts) and CSV
    (line where the row starts, header is line 1); None for Parquet."""

    def where(self) -> str:
        if self.line is not None:
            return f"{self.path} line {self.line}"
        return f"{self.path} record {self.index}"


@dataclass(frozen=True, slots=True)
class Conversation:
    turns: tuple[Turn, ...]
    tools: str | None = None
    """Tool (function) definitions as a JSON string, if the record had any."""
    id: str | None = None
    ref: RecordRef | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem with one record (or with a whole file)."""

    path: str
    line: int | None
    """1-based line, or None where lines mean nothing (Parquet)."""
    index: int | None
    """0-based record index, or None for a whole-file problem (e.g. a BOM)."""
    field: str
    """The field, as a path into the record: ``conversations[3].from``, ``output``, ``id``;
    ``""`` for the whole line."""
    reason: str
    """What is wrong and what to do, in words a person can act on."""
    code: str
    """A stable machine-readable kind, e.g. ``malformed_json``, ``unknown_role``."""
    severity: Literal["error", "warning"] = "error"

    def location(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
        elif self.index is not None:
            where += f" record {self.index}"
        if self.field:
            where += f" [{self.field}]"
        return where

    def __str__(self) -> str:
        return f"{self.location()}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "line": self.line,
            "index": self.index,
            "field": self.field,
            "code": self.code,
            "severity": self.severity,
            "reason": self.reason,
        }


# Default column and role names per format, as LLaMA-Factory's dataset_info spells them.
DEFAULT_COLUMNS: dict[FormatName, dict[str, str]] = {
    "sharegpt": {
        "messages": "conversations",
        "role": "from",
        "content": "value",
        "system": "system",
        "tools": "tools",
        "id": "id",
    },
    "chatml": {
        "messages": "messages",
        "role": "role",
        "content": "content",
        "system": "system",
        "tools": "tools",
        "id": "id",
    },
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
        "id": "id",
    },
}

DEFAULT_ROLES: dict[FormatName, dict[str, Role]] = {
    "sharegpt": {
        "human": "user",
        "gpt": "model",
        "system": "system",
        "function_call": "tool_call",
        "observation": "tool_result",
    },
    "chatml": {
        "user": "user",
        "assistant": "model",
        "system": "system",
        "developer": "system",
        "tool": "tool_result",
        "function": "tool_result",
    },
    "alpaca": {},
}


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """How to read a dataset: its format (None = detect per file), column and role names.

    ``columns`` and ``roles`` override the defaults of the format, key by key: e.g.
    ``DatasetSpec("sharegpt", columns={"messages": "dialog"}, roles={"bot": "model"})``.
    """

    format: FormatName | None = None
    columns: dict[str, str] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    max_chars: int = 65536
    """Longest allowed text of one turn, in characters; longer is an error."""

    def column_map(self, fmt: FormatName) -> dict[str, str]:
        return {**DEFAULT_COLUMNS[fmt], **self.columns}

    def role_map(self, fmt: FormatName) -> dict[str, Role]:
        return {**DEFAULT_ROLES[fmt], **self.roles}
