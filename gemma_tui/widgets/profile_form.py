"""Every field of a training profile, editable in place and checked as you type.

One compact row per key (``train.batch_size  [4        ]``), grouped by section. Each
keystroke checks the field alone (:func:`pipeline.profiles.validate_field`: type, range,
choices) and marks it; then all edits are applied together
(:func:`pipeline.profiles.replace_fields`), which also checks combinations (``max_steps``
and ``epochs`` both set, ...). The form posts :class:`ProfileForm.Changed` with the
resulting profile, or None and the problems, after every edit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from textual import on
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Static

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.profiles import FieldInfo, Profile

SECTION_TITLES = {
    "": "Name",
    "model": "Model",
    "lora": "LoRA",
    "train": "Training",
    "data": "Data",
}


def value_text(value: Any) -> str:
    """A profile value as the user would type it: ``q, v``; ``a = b``; ``true``; ``2e-04``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} = {v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        text = repr(value)
        return f"{value:g}" if "e" in f"{value:g}" else text
    return str(value)


def _input_id(key: str) -> str:
    return "field-" + key.replace(".", "--")


def _key_of(input_id: str) -> str:
    return input_id.removeprefix("field-").replace("--", ".")


class ProfileForm(VerticalScroll):
    """Rows of ``key  value`` for one profile; see the module docstring."""

    DEFAULT_CSS = """
    ProfileForm { height: 1fr; }
    ProfileForm .form-section { color: $text-accent; text-style: bold; margin-top: 1; }
    ProfileForm .form-row { height: 1; }
    ProfileForm .form-key { width: 28; color: $text-muted; }
    ProfileForm .form-row Input {
        width: 1fr; height: 1; border: none; padding: 0 1; background: $boost;
    }
    ProfileForm .form-row Input:focus { background: $primary 30%; }
    ProfileForm .form-row Input.-invalid { background: $error 35%; }
    ProfileForm .form-row.-edited .form-key { color: $text-warning; }
    ProfileForm #form-problems { color: $text-error; height: auto; margin-top: 1; }
    """

    class Changed(Message):
        """The form's profile after an edit: ``profile`` None when some field is wrong."""

        def __init__(self, profile: Profile | None, problems: tuple[str, ...]) -> None:
            super().__init__()
            self.profile = profile
            self.problems = problems

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        from pipeline.profiles import describe_fields

        self.fields: tuple[FieldInfo, ...] = describe_fields()
        self.base: Profile | None = None
        """The profile as loaded (edits are applied on top of it)."""
        self.edits: dict[str, Any] = {}
        """Keys the user changed and their parsed values."""
        self.field_problems: dict[str, str] = {}
        self.profile: Profile | None = None
        """The base with the edits applied; None while something is wrong."""
        self.problems: tuple[str, ...] = ()
        self._loading = False

    def compose(self) -> ComposeResult:
        section = None
        for info in self.fields:
            if info.section != section:
                section = info.section
                yield Label(SECTION_TITLES.get(section, section), classes="form-section")
            with Horizontal(classes="form-row"):
                yield Label(info.name, classes="form-key")
                field = Input(id=_input_id(info.key), compact=True)
                field.tooltip = f"{info.key} ({info.type}; {info.allowed})\n{info.help}"
                yield field
        yield Static(id="form-problems")

    # ---- loading and reading

    def load(self, profile: Profile, *, edits: Mapping[str, str] | None = None) -> None:
        """Show ``profile``; ``edits`` (key -> text) are typed in on top of it."""
        from pipeline.profiles import profile_to_dict

        self.base = profile
        self.edits.clear()
        self.field_problems.clear()
        data = profile_to_dict(profile)
        self._loading = True
        try:
            for info in self.fields:
                section = data.get(info.section, {}) if info.section else data
                value = section.get(info.name) if isinstance(section, dict) else None
                text = value_text(value)
                if edits and info.key in edits:
                    text = edits[info.key]
                self.query_one(f"#{_input_id(info.key)}", Input).value = text
        finally:
            self._loading = False
        for key, text in (edits or {}).items():
            self._check(key, text)
        self._apply()

    def set_value(self, key: str, text: str) -> None:
        """Type ``text`` into ``key``'s field (checked like a user's edit)."""
        self.query_one(f"#{_input_id(key)}", Input).value = text

    def value(self, key: str) -> str:
        return self.query_one(f"#{_input_id(key)}", Input).value

    def set_disabled(self, disabled: bool) -> None:
        for field in self.query(Input):
            field.disabled = disabled

    # ---- checking

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        if self._loading or event.input.id is None or not event.input.id.startswith("field-"):
            return
        event.stop()
        self._check(_key_of(event.input.id), event.value)
        self._apply()

    def _check(self, key: str, text: str) -> None:
        from pipeline.profiles import profile_to_dict, validate_field

        field = self.query_one(f"#{_input_id(key)}", Input)
        result = validate_field(key, text)
        self.field_problems.pop(key, None)
        if result.ok:
            base = profile_to_dict(self.base) if self.base is not None else {}
            section, _, name = key.rpartition(".")
            table = base.get(section, {}) if section else base
            original = table.get(name) if isinstance(table, dict) else None
            if value_text(original) == value_text(result.value):
                self.edits.pop(key, None)
            else:
                self.edits[key] = result.value
        else:
            self.field_problems[key] = "; ".join(str(p) for p in result.problems)
            self.edits.pop(key, None)
        field.set_class(not result.ok, "-invalid")
        row = field.parent
        if row is not None:
            row.set_class(key in self.edits, "-edited")

    def _apply(self) -> None:
        from pipeline.errors import ProfileError
        from pipeline.profiles import replace_fields

        problems = list(self.field_problems.values())
        profile = None
        if self.base is not None and not problems:
            try:
                profile = replace_fields(self.base, self.edits)
            except ProfileError as error:
                problems = [line for line in str(error.message).splitlines() if line.strip()]
        self.profile = profile
        self.problems = tuple(problems)
        self.query_one("#form-problems", Static).update("\n".join(self.problems))
        self.post_message(self.Changed(profile, self.problems))
