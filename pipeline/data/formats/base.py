"""What every record conversion shares: the result, the issues, and the field paths.

A format's converter (:mod:`~pipeline.data.formats.sharegpt`,
:mod:`~pipeline.data.formats.chatml`, :mod:`~pipeline.data.formats.alpaca`) fills a
:class:`RecordBuilder` with turns and issues and returns its :class:`Converted` result. Each
turn remembers where its text came from (an int, see the ``SRC_*`` values), which
:class:`FieldNames` turns back into the field path a person sees in the file, e.g.
``conversations[3].value``; the pandera checks (:mod:`pipeline.data.schemas`) use it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.data.readers.records import RawRecord, record_issue
from pipeline.data.types import Conversation, DatasetSpec, FormatName, Issue, Role, Turn

# Where a turn's text came from, for issue fields (see FieldNames). Non-negative values are
# message indices (ShareGPT/ChatML) or history positions (Alpaca: pair k -> 2k and 2k + 1).
SRC_SYSTEM = -1
SRC_PROMPT = -2
SRC_RESPONSE = -3


@dataclass(frozen=True, slots=True)
class Converted:
    """What :func:`~pipeline.data.converter.convert_record` found: the conversation (None
    when invalid), the issues, and for each turn where its text came from (see
    :class:`FieldNames`)."""

    conversation: Conversation | None
    issues: list[Issue]
    sources: tuple[int, ...]


class FieldNames:
    """Turns a turn's source (an int) back into the field path a person sees in the file."""

    def __init__(self, fmt: FormatName, spec: DatasetSpec) -> None:
        self.fmt = fmt
        self.columns = spec.column_map(fmt)

    def text(self, src: int, role: str) -> str:
        """The field that holds a turn's text, e.g. ``conversations[3].value``."""
        cols = self.columns
        if src == SRC_SYSTEM:
            return cols["system"]
        if self.fmt == "alpaca":
            if src == SRC_PROMPT:
                return cols["prompt"]
            if src == SRC_RESPONSE:
                return cols["response"]
            return f"{cols['history']}[{src // 2}][{src % 2}]"
        if self.fmt == "chatml" and role == "tool_call":
            return f"{cols['messages']}[{src}].tool_calls"
        return f"{cols['messages']}[{src}].{cols['content']}"

    def role(self, src: int, role: str) -> str:
        """The field that decides a turn's role, e.g. ``conversations[3].from``."""
        if self.fmt == "alpaca" or src == SRC_SYSTEM:
            return self.text(src, role)
        return f"{self.columns['messages']}[{src}].{self.columns['role']}"

    def conversation(self) -> str:
        """The field that holds the turns as a whole (``conversations``, ``output``)."""
        return self.columns["response" if self.fmt == "alpaca" else "messages"]

    def id(self) -> str:
        return self.columns["id"]


def describe_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


class RecordBuilder:
    """Collects turns and issues for one record."""

    __slots__ = ("issues", "record", "sources", "turns")

    def __init__(self, record: RawRecord) -> None:
        self.record = record
        self.turns: list[Turn] = []
        self.sources: list[int] = []
        self.issues: list[Issue] = []

    def issue(self, field: str, code: str, reason: str) -> None:
        self.issues.append(record_issue(self.record.ref, code, reason, field))

    def missing(self, field: str, what: str) -> None:
        self.issue(field, "missing_field", f"{field!r} is missing; add {what}")

    def wrong_type(self, field: str, value: Any, want: str) -> None:
        self.issue(field, "wrong_type", f"{field!r} is {describe_kind(value)}, but must be {want}")

    def string(self, field: str, value: Any, *, required: bool, what: str) -> str | None:
        """A text field: a string, or an issue (missing when required, wrong type)."""
        if type(value) is str:
            return value
        if value is None:
            if required:
                self.missing(field, what)
        else:
            self.wrong_type(field, value, "a string")
        return None

    def add(self, role: Role, text: str, src: int) -> None:
        self.turns.append(Turn(role, text))
        self.sources.append(src)

    def system(self, value: Any, field: str) -> None:
        text = self.string(field, value, required=False, what="")
        if text is not None and text.strip():  # an empty system column means "no system"
            self.add("system", text, SRC_SYSTEM)

    def tools(self, value: Any, field: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                orjson.loads(value)
            except orjson.JSONDecodeError as err:
                self.issue(
                    field,
                    "bad_tools",
                    f"{field!r} must be JSON (a list of function definitions) but is not valid "
                    f"JSON: {err.msg} at character {err.pos}; fix it or remove the field",
                )
                return None
            return value
        if isinstance(value, list | dict):
            return json.dumps(value, ensure_ascii=False)
        self.wrong_type(field, value, "a JSON string or a list of function definitions")
        return None

    def ident(self, value: Any, field: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            return value or None
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        self.wrong_type(field, value, "a string or an integer")
        return None

    def result(self, tools: str | None = None, ident: str | None = None) -> Converted:
        if self.issues:
            return Converted(None, self.issues, ())
        if not self.turns:
            # Only reachable when every turn was filtered out, which the callers prevent.
            raise AssertionError("a record without issues must have turns")
        conv = Conversation(tuple(self.turns), tools, ident, self.record.ref)
        return Converted(conv, self.issues, tuple(self.sources))


def message_list(
    b: RecordBuilder, data: dict[str, Any], key: str, fmt_name: str
) -> list[Any] | None:
    msgs = data.get(key)
    if msgs is None:
        b.missing(key, f"a list of {fmt_name} turns")
        return None
    if not isinstance(msgs, list):
        b.wrong_type(key, msgs, f"a list of {fmt_name} turns")
        return None
    if not msgs:
        b.issue(key, "empty_field", f"{key!r} is an empty list; add the turns or drop the row")
        return None
    return msgs


def message_role(
    b: RecordBuilder, msg: dict[str, Any], field: str, key: str, roles: dict[str, Role]
) -> Role | None:
    name = msg.get(key)
    if type(name) is not str:
        if name is None:
            b.missing(field, f"the speaker ({', '.join(roles)})")
        else:
            b.wrong_type(field, name, f"a role name ({', '.join(roles)})")
        return None
    role = roles.get(name)
    if role is None:
        b.issue(
            field,
            "unknown_role",
            f"unknown role {name!r}; use one of {', '.join(repr(r) for r in roles)}, or map it "
            f"with DatasetSpec.roles (e.g. roles={{{name!r}: 'model'}})",
        )
    return role
