"""Constraints on profile fields and the generic value checker.

Each field's type hint says what is allowed: ``Literal`` for choices and ``Annotated`` with a
:class:`Range`, :class:`Text`, :class:`Refuse`, :class:`Items` or :class:`Rule`. :func:`_specs`
reads the hints of a config class into one :class:`_Spec` per field, and :func:`_check_value`
checks (and normalises) one value against its spec.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pipeline.profiles.problems import Problem, _not_one_of, _num, _type_name, format_value


@dataclass(frozen=True, slots=True)
class Range:
    """Allowed numeric range of a field; ``None`` leaves that side open."""

    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False

    def problem(self, x: float) -> str | None:
        if self.min is not None and (x <= self.min if self.min_exclusive else x < self.min):
            return "too small"
        if self.max is not None and (x >= self.max if self.max_exclusive else x > self.max):
            return "too large"
        return None

    def describe(self) -> str:
        lo, hi = self.min, self.max
        if lo is not None and hi is not None and not (self.min_exclusive or self.max_exclusive):
            return f"{_num(lo)} to {_num(hi)}"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if self.min_exclusive else '>='} {_num(lo)}")
        if hi is not None:
            parts.append(f"{'<' if self.max_exclusive else '<='} {_num(hi)}")
        return " and ".join(parts)


@dataclass(frozen=True, slots=True)
class Text:
    """Constraints on a string."""

    min_length: int = 0
    max_length: int = 4096
    single_line: bool = True


@dataclass(frozen=True, slots=True)
class Refuse:
    """Values refused with a reason of their own (checked before the choices)."""

    reasons: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Items:
    """Constraints on a list: how many items at least, and whether repeats are allowed."""

    min_length: int = 0
    unique: bool = True


@dataclass(frozen=True, slots=True)
class Rule:
    """A check of its own: returns a reason when the value is bad, else None."""

    check: Callable[[Any], str | None]
    allowed: str
    whole_numbers: bool = False
    """A string field that also takes a whole number (kept as its text: ``devices = 2``)."""


# --------------------------------------------------------------------------- stock rules


_FLOAT16 = (
    "Gemma 3 activations overflow float16 (they exceed its largest value, 65504) and the loss "
    "turns to inf or NaN; use bfloat16 (or float32 on a CPU)"
)


_REFUSE_FLOAT16 = Refuse(
    tuple((name, _FLOAT16) for name in ("float16", "mixed_float16", "fp16", "half"))
)


def _check_source(source: str) -> str | None:
    if not source.strip():
        return "must not be empty"
    if source.startswith("hf://"):
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", source[5:]):
            return "an hf:// handle is hf://owner/name, e.g. hf://google/gemma-3-1b-it"
        return None
    if re.fullmatch(r"[a-z]+", source) and source not in ("embedded", "tiny"):
        close = difflib.get_close_matches(source, ["embedded", "tiny"], n=1, cutoff=0.7)
        if close:
            return f'unknown source; did you mean "{close[0]}"?'
    return None


# --------------------------------------------------------------------------- field specs


@dataclass(frozen=True)
class _Spec:
    kind: Literal["bool", "int", "float", "str", "list", "table", "section"]
    optional: bool = False
    choices: tuple[str, ...] | None = None
    value_choices: tuple[str, ...] | None = None
    range: Range | None = None
    text: Text | None = None
    refuse: Mapping[str, str] = field(default_factory=dict)
    items: Items | None = None
    rule: Rule | None = None
    section: type | None = None

    @property
    def type_name(self) -> str:
        if self.kind == "list":
            return "list of str"
        if self.kind == "table":
            return "table of str"
        return self.kind

    def allowed(self) -> str:
        if self.rule is not None:
            return self.rule.allowed
        if self.choices is not None:
            return ", ".join(json.dumps(c) for c in self.choices)
        if self.kind == "bool":
            return "true, false"
        if self.range is not None:
            return self.range.describe()
        if self.kind == "table" and self.value_choices is not None:
            return "values " + ", ".join(json.dumps(c) for c in self.value_choices)
        if self.text is not None and self.text.min_length:
            return f"1 to {self.text.max_length} characters"
        return self.type_name


def _literal_strings(hint: Any) -> tuple[str, ...] | None:
    if get_origin(hint) is Literal:
        return tuple(str(a) for a in get_args(hint))
    return None


def _spec_from_hint(hint: Any) -> _Spec:
    optional = False
    if get_origin(hint) in (Union, types.UnionType):
        args = get_args(hint)
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        (hint,) = rest
    extras: tuple[Any, ...] = ()
    if get_origin(hint) is Annotated:
        hint, *more = get_args(hint)
        extras = tuple(more)
    kw: dict[str, Any] = {"optional": optional}
    for extra in extras:
        if isinstance(extra, Range):
            kw["range"] = extra
        elif isinstance(extra, Text):
            kw["text"] = extra
        elif isinstance(extra, Refuse):
            kw["refuse"] = dict(extra.reasons)
        elif isinstance(extra, Items):
            kw["items"] = extra
        elif isinstance(extra, Rule):
            kw["rule"] = extra
    if hint is bool:
        return _Spec("bool", **kw)
    if hint is int:
        return _Spec("int", **kw)
    if hint is float:
        return _Spec("float", **kw)
    if hint is str:
        return _Spec("str", **kw)
    if (choices := _literal_strings(hint)) is not None:
        return _Spec("str", choices=choices, **kw)
    origin = get_origin(hint)
    if origin is tuple:
        return _Spec("list", choices=_literal_strings(get_args(hint)[0]), **kw)
    if origin is Mapping:
        return _Spec("table", value_choices=_literal_strings(get_args(hint)[1]), **kw)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _Spec("section", section=hint, **kw)
    raise TypeError(f"profiles: unsupported field type {hint!r}")


@cache
def _specs(cls: type) -> dict[str, _Spec]:
    hints = get_type_hints(cls, include_extras=True)
    return {f.name: _spec_from_hint(hints[f.name]) for f in dataclasses.fields(cls)}


def _key(cls: type, name: str) -> str:
    section: str = getattr(cls, "section", "")
    return f"{section}.{name}" if section else name


def _check_value(spec: _Spec, key: str, value: Any) -> tuple[Any, list[Problem]]:
    """Check one value against its spec: the normalised value, or problems."""
    allowed, given = spec.allowed(), value

    def bad(reason: str) -> tuple[Any, list[Problem]]:
        return None, [Problem(key=key, value=given, reason=reason, allowed=allowed)]

    if value is None:
        return (None, []) if spec.optional else bad("must be set")
    kind = spec.kind
    if kind == "bool":
        return (
            (value, [])
            if isinstance(value, bool)
            else bad(f"expected true or false, got {_type_name(value)}")
        )
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return bad(
                f"expected {'an integer' if kind == 'int' else 'a number'}, got {_type_name(value)}"
            )
        if kind == "int" and not isinstance(value, int):
            return bad(f"expected an integer, got {_type_name(value)}")
        if kind == "float":
            value = float(value)
            if not math.isfinite(value):
                return bad("must be a finite number")
        if spec.range is not None and (reason := spec.range.problem(value)):
            return bad(reason)
        return value, []
    if kind == "str":
        whole = spec.rule is not None and spec.rule.whole_numbers
        if whole and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return bad(f"expected a string, got {_type_name(value)}")
        if value in spec.refuse:
            return bad(spec.refuse[value])
        if spec.choices is not None and value not in spec.choices:
            return bad(_not_one_of(value, spec.choices))
        if spec.text is not None:
            if len(value) < spec.text.min_length:
                return bad("must not be empty")
            if len(value) > spec.text.max_length:
                return bad(f"too long ({len(value)} characters)")
            if spec.text.single_line and "\n" in value:
                return bad("must be one line")
        if spec.rule is not None and (reason := spec.rule.check(value)):
            return bad(reason)
        return value, []
    if kind == "list":
        if not isinstance(value, list | tuple):
            return bad(f"expected a list, got {_type_name(value)}")
        if any(not isinstance(v, str) for v in value):
            return bad("expected a list of strings")
        items = spec.items or Items()
        if len(value) < items.min_length:
            return bad("must not be empty")
        if spec.choices is not None:
            unknown = [v for v in value if v not in spec.choices]
            if unknown:
                return bad(_not_one_of(unknown[0], spec.choices, noun="item"))
        if items.unique and len(set(value)) < len(value):
            dupes = sorted({v for v in value if value.count(v) > 1})
            return bad(f"repeated item {json.dumps(dupes[0])}")
        return tuple(value), []
    if kind == "table":
        if not isinstance(value, Mapping):
            return bad(f"expected a table, got {_type_name(value)}")
        for k, v in value.items():
            if not isinstance(v, str):
                return bad(f"{k} = {format_value(v)}: expected a string, got {_type_name(v)}")
            if spec.value_choices is not None and v not in spec.value_choices:
                return bad(f"{k}: " + _not_one_of(v, spec.value_choices))
        return types.MappingProxyType(dict(value)), []
    raise AssertionError(kind)
