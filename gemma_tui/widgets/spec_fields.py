"""How to read a dataset, as three fields: the format, column names and role names.

The pipeline reads a dataset through a :class:`~pipeline.data.types.DatasetSpec` (format,
``columns``, ``roles``; docs/data.md), which the CLI spells ``--format sharegpt --column
messages=dialog --role bot=model``. Here it is a Select of the format (``auto`` detects it
per file) and two inputs of comma-separated pairs: ``messages=dialog, role=who`` and
``bot=model, asker=user``. Both are checked on every change, against the format chosen (a
pair without ``=``, a column key the format does not have, a role that is not canonical);
the reason is shown under the fields and :meth:`SpecFields.spec` is None while one is wrong.

``pipeline.data.types`` holds plain dataclasses only (no pandas), so it is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, cast

from textual import on
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Label, Select

from pipeline.data.types import DEFAULT_COLUMNS, FORMATS, ROLES, DatasetSpec, FormatName, Role

if TYPE_CHECKING:
    from textual.app import ComposeResult

AUTO = "auto"
FORMAT_OPTIONS: tuple[str, ...] = (AUTO, *FORMATS)


def parse_pairs(text: str, shape: str) -> dict[str, str]:
    """``"a=b, c=d"`` -> ``{"a": "b", "c": "d"}``; a ValueError says what is wrong.

    ``shape`` names a pair in the error, e.g. ``"KEY=NAME"``. Blank items (a trailing comma)
    are ignored.
    """
    pairs: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise ValueError(f"{item!r} is not {shape}")
        if key in pairs:
            raise ValueError(f"{key!r} is given twice")
        pairs[key] = value
    return pairs


def column_keys(fmt: FormatName | None) -> tuple[str, ...]:
    """The column keys ``fmt`` has (None: those of any format), in the documented order."""
    formats = FORMATS if fmt is None else (fmt,)
    return tuple(dict.fromkeys(key for f in formats for key in DEFAULT_COLUMNS[f]))


def parse_columns(text: str, fmt: FormatName | None) -> dict[str, str]:
    """Column renames ``KEY=NAME`` whose keys ``fmt`` has; a ValueError says why not."""
    columns = parse_pairs(text, "KEY=NAME (e.g. messages=dialog)")
    keys = column_keys(fmt)
    for key in columns:
        if key not in keys:
            where = "any format" if fmt is None else fmt
            raise ValueError(f"{key!r} is not a column key of {where}; use {', '.join(keys)}")
    return columns


def parse_roles(text: str, fmt: FormatName | None) -> dict[str, Role]:
    """Role mappings ``NAME=ROLE`` onto canonical roles; a ValueError says why not."""
    roles = parse_pairs(text, "NAME=ROLE (e.g. bot=model)")
    if roles and fmt == "alpaca":
        raise ValueError("alpaca has no roles to rename; leave this empty")
    for name, role in roles.items():
        if role not in ROLES:
            raise ValueError(
                f"{role!r} is not a canonical role ({name}={role}); use {', '.join(ROLES)}"
            )
    return cast("dict[str, Role]", roles)


def format_pairs(pairs: Mapping[str, str]) -> str:
    """The text :func:`parse_pairs` reads back as ``pairs``."""
    return ", ".join(f"{key}={value}" for key, value in pairs.items())


def describe_spec(spec: DatasetSpec) -> str:
    """The column and role overrides of ``spec``, short (``""`` when it has none)."""
    parts = []
    if spec.columns:
        parts.append(f"columns {format_pairs(spec.columns)}")
    if spec.roles:
        parts.append(f"roles {format_pairs(spec.roles)}")
    return "; ".join(parts)


class PairsValidator(Validator):
    """Fails with the reason ``parse`` gives (a ValueError) for the input's text."""

    def __init__(self, parse: Callable[[str], object]) -> None:
        super().__init__()
        self.parse = parse

    def validate(self, value: str) -> ValidationResult:
        try:
            self.parse(value)
        except ValueError as error:
            return self.failure(str(error), value)
        return self.success()


class SpecFields(Vertical):
    """Format Select, column and role inputs, the reason any is wrong, and the keys to use."""

    DEFAULT_CSS = """
    SpecFields { height: auto; }
    SpecFields > #spec-row { height: auto; }
    SpecFields .spec-field { width: 1fr; height: auto; }
    SpecFields #spec-format-field { width: 16; }
    SpecFields .spec-field > Label { color: $text-muted; padding: 0 1; }
    SpecFields > #spec-error { color: $text-error; width: 1fr; }
    SpecFields > #spec-hint { color: $text-muted; width: 1fr; }
    """

    def __init__(
        self, spec: DatasetSpec | None = None, *, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.initial = spec or DatasetSpec()

    def compose(self) -> ComposeResult:
        spec = self.initial
        with Horizontal(id="spec-row"):
            with Vertical(classes="spec-field", id="spec-format-field"):
                yield Label("Format")
                yield Select(
                    [(option, option) for option in FORMAT_OPTIONS],
                    value=spec.format or AUTO,
                    allow_blank=False,
                    id="spec-format",
                )
            with Vertical(classes="spec-field"):
                yield Label("Column names (key=name, …)")
                yield Input(
                    format_pairs(spec.columns),
                    placeholder="messages=dialog, role=who",
                    validators=[PairsValidator(lambda text: parse_columns(text, self.format))],
                    id="spec-columns",
                )
            with Vertical(classes="spec-field"):
                yield Label("Role names (name=role, …)")
                yield Input(
                    format_pairs(spec.roles),
                    placeholder="bot=model, asker=user",
                    validators=[PairsValidator(lambda text: parse_roles(text, self.format))],
                    id="spec-roles",
                )
        yield Label("", id="spec-error")
        yield Label("", id="spec-hint")

    def on_mount(self) -> None:
        self._check()

    @property
    def format(self) -> FormatName | None:
        """The format chosen; None for auto (detect per file)."""
        try:
            value = self.query_one("#spec-format", Select).value
        except NoMatches:  # not composed yet
            return self.initial.format
        return cast("FormatName", value) if value in FORMATS else None

    def errors(self) -> list[str]:
        """What is wrong with the column and role fields, one line each (empty: nothing)."""
        fmt = self.format
        found = []
        for name, field_id, parse in (
            ("Column names", "#spec-columns", parse_columns),
            ("Role names", "#spec-roles", parse_roles),
        ):
            try:
                parse(self.query_one(field_id, Input).value, fmt)
            except ValueError as error:
                found.append(f"{name}: {error}")
        return found

    def spec(self) -> DatasetSpec | None:
        """The spec the fields describe (``max_chars`` kept from the initial one); None
        while a field is wrong."""
        if self.errors():
            return None
        fmt = self.format
        return DatasetSpec(
            format=fmt,
            columns=parse_columns(self.query_one("#spec-columns", Input).value, fmt),
            roles=parse_roles(self.query_one("#spec-roles", Input).value, fmt),
            max_chars=self.initial.max_chars,
        )

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self) -> None:
        self._check()

    def _check(self) -> None:
        for field_id in ("#spec-columns", "#spec-roles"):
            field = self.query_one(field_id, Input)
            field.validate(field.value)  # marks it -invalid; the format may have changed
        errors = self.errors()
        self.query_one("#spec-error", Label).update("\n".join(errors))
        self.query_one("#spec-error", Label).display = bool(errors)
        fmt = self.format
        keys = ", ".join(column_keys(fmt))
        hint = f"Column keys ({fmt or 'any format'}): {keys}."
        if fmt != "alpaca":
            hint += f" Roles: {', '.join(ROLES)}."
        self.query_one("#spec-hint", Label).update(hint)
