"""What is wrong with a profile: :class:`Problem`, :class:`ProfileValidationError` and the
wording of values, types and unknown choices in their messages."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ProfileError
from pipeline.profiles.paths import PROFILES_DIR


class _Unset:
    def __repr__(self) -> str:
        return "(not set)"


UNSET: Any = _Unset()
"""The value of a :class:`Problem` about a key that is missing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong with a profile: key, the bad value, why, and what is allowed."""

    key: str
    """Dotted key, e.g. ``train.batch_size``."""
    value: Any
    """The value found (as read from TOML), or :data:`UNSET`."""
    reason: str
    allowed: str | None = None
    source: str | None = None
    """The file (or other origin) the value came from."""

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        text = f"{where}{self.key} = {format_value(self.value)}: {self.reason}"
        return f"{text} (allowed: {self.allowed})" if self.allowed else text


class ProfileValidationError(ProfileError):
    """A profile has bad keys or values; ``problems`` has every one, the message one a line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "\n".join(str(p) for p in self.problems),
            hint=f"Every key is documented in the shipped profiles ({PROFILES_DIR}).",
        )


def format_value(value: Any) -> str:
    """A value written as in TOML (strings quoted), cut at 80 characters."""
    if value is UNSET:
        text = "(not set)"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {format_value(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(format_value(v) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _num(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _not_one_of(
    value: str, choices: Sequence[str], *, noun: str = "value", context: str = ""
) -> str:
    close = difflib.get_close_matches(value.lower(), choices, n=1, cutoff=0.6)
    hint = f"; did you mean {json.dumps(close[0])}?" if close else ""
    return f"unknown {noun} {json.dumps(value)}{context}{hint}"
