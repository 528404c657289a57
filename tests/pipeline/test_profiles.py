"""Profiles: shipped TOMLs validate, round trips are exact, broken files pin their messages."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pipeline import profiles
from pipeline.errors import ProfileError
from pipeline.profiles import (
    LORA_TARGETS,
    PROFILES_DIR,
    UNSET,
    DataConfig,
    FieldInfo,
    LoraConfig,
    ModelConfig,
    Problem,
    Profile,
    ProfileValidationError,
    TrainConfig,
    describe_field,
    describe_fields,
    dumps_profile,
    list_profiles,
    load_profile,
    loads_profile,
    profile_from_dict,
    profile_problems,
    profile_to_dict,
    replace_fields,
    save_profile,
    validate_field,
)

FIXTURES = Path(__file__).parent / "profile_fixtures"
SHIPPED = ["cpu-smoke", "h100-80gb", "rtx3060-12gb", "rtx4090-24gb"]
TARGETS = '"q", "k", "v", "o", "gate", "up", "down"'
TOP_KEYS = "name, description, model (a table), lora (a table), train (a table), data (a table)"
TARGETS_TUPLE = ("q", "k", "v", "o", "gate", "up", "down")
TRAIN_KEYS = (
    "batch_size, gradient_accumulation_steps, sequence_length, learning_rate, schedule, "
    "warmup_steps, warmup_ratio, max_steps, epochs, weight_decay, max_grad_norm, eval_every, "
    "checkpoint_every, seed, precision, packing, train_on_prompt, remat, remat_policy, "
    "loss_chunk_size, devices, model_parallel"
)
FLOAT16 = (
    "Gemma 3 activations overflow float16 (they exceed its largest value, 65504) and the loss "
    'turns to inf or NaN; use bfloat16 (or float32 on a CPU) (allowed: "bfloat16", "float32")'
)


def _full_profile() -> Profile:
    """A profile with every field away from its default, to round-trip."""
    return Profile(
        name="full",
        description='Line one.\nLine two with "quotes", a tab\tand ünïcödé.',
        model=ModelConfig(source="hf://google/gemma-3-1b-it", dtype="float32"),
        lora=LoraConfig(rank=4, alpha=8.5, targets=("down", "q", "gate")),
        train=TrainConfig(
            batch_size=3,
            gradient_accumulation_steps=5,
            sequence_length=96,
            learning_rate=1e-05,
            schedule="linear",
            warmup_ratio=0.1,
            epochs=1.5,
            weight_decay=0.0,
            max_grad_norm=0.0,
            eval_every=7,
            checkpoint_every=0,
            seed=2**32 - 1,
            precision="float32",
            packing=False,
            train_on_prompt=True,
            remat=True,
            loss_chunk_size=0,
        ),
        data=DataConfig(
            train_path="data/train.jsonl",
            eval_path="data/eval.jsonl",
            format="sharegpt",
            columns={"messages": "dialog", "role": "speaker"},
            roles={"bot": "model", "person": "user"},
            max_chars=1000,
            dedup="near",
            near_threshold=0.75,
        ),
    )


# --------------------------------------------------------------------------- shipped profiles


def test_list_profiles_names_the_four_shipped_profiles() -> None:
    assert list_profiles() == SHIPPED
    assert list_profiles(FIXTURES)[:2] == ["bad_type", "float16"]
    assert list_profiles("/nonexistent") == []


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_validates_and_round_trips(name: str, tmp_path: Path) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.description
    assert load_profile(PROFILES_DIR / f"{name}.toml") == profile
    assert loads_profile(dumps_profile(profile)) == profile
    saved = save_profile(profile, tmp_path / "run" / "profile.toml")
    assert load_profile(saved) == profile
    assert profile_problems(tomllib.loads(saved.read_text())) == []
    assert profile.train.effective_batch_size == 16 or name == "cpu-smoke"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_spells_out_every_key(name: str) -> None:
    """Hand-written profiles document themselves: every key that has no "unset" is there."""
    data = tomllib.loads((PROFILES_DIR / f"{name}.toml").read_text())
    present = {f"{s}.{k}" for s, table in data.items() if isinstance(table, dict) for k in table}
    present |= {k for k, v in data.items() if not isinstance(v, dict)}
    required = {f.key for f in describe_fields() if not f.optional and f.type != "table of str"}
    assert required - present == set()
    assert sum(k in present for k in ("train.max_steps", "train.epochs")) == 1
    assert "data.eval_fraction" in present  # eval_every > 0 needs eval data


def test_shipped_profile_values_follow_the_measurements() -> None:
    small = load_profile("rtx3060-12gb")
    assert small.model == ModelConfig(source="gemma3_instruct_1b", dtype="bfloat16")
    assert small.lora == LoraConfig(rank=8, alpha=16.0, targets=("q", "v"))
    assert (small.train.batch_size, small.train.sequence_length) == (4, 1024)
    assert 0 < small.train.loss_chunk_size <= 256  # fused chunk 256 peaked at 9.06 GiB
    assert not small.train.remat
    assert small.keras_dtype_policy == "bfloat16"
    mid, big = load_profile("rtx4090-24gb"), load_profile("h100-80gb")
    assert small.train.batch_size < mid.train.batch_size < big.train.batch_size
    assert small.lora.rank < mid.lora.rank <= big.lora.rank
    assert len(big.lora.targets) == 7
    smoke = load_profile("cpu-smoke")
    assert smoke.model == ModelConfig(source="embedded", dtype="float32")
    assert smoke.keras_dtype_policy == "float32"
    assert smoke.train.max_steps is not None and smoke.train.max_steps <= 10
    assert smoke.train.sequence_length <= 256


# --------------------------------------------------------------------------- round trip and save


def test_round_trip_is_exact_for_every_field(tmp_path: Path) -> None:
    profile = _full_profile()
    text = dumps_profile(profile)
    assert "null" not in text and "None" not in text
    assert loads_profile(text) == profile
    path = save_profile(profile, tmp_path / "a" / "b" / "full.toml")
    loaded = load_profile(path)
    assert loaded == profile
    assert profile_to_dict(loaded) == profile_to_dict(profile)
    assert isinstance(loaded.lora.targets, tuple)
    assert hash(loaded) == hash(profile)  # usable as a cache key
    assert dict(loaded.data.roles) == {"bot": "model", "person": "user"}


def test_unset_fields_are_left_out_and_come_back_unset() -> None:
    profile = Profile(train=TrainConfig(max_steps=10))
    data = profile_to_dict(profile)
    assert "warmup_steps" not in data["train"] and "epochs" not in data["train"]
    assert "columns" not in data["data"] and "train_path" not in data["data"]
    assert list(data) == ["name", "description", "model", "lora", "train", "data"]
    assert profile_from_dict(data) == profile


def test_save_profile_is_atomic_and_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.toml"
    first = Profile(name="first", train=TrainConfig(max_steps=10))
    save_profile(first, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["p.toml"]

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(profiles.os, "replace", refuse)
    with pytest.raises(ProfileError, match="cannot write the profile \\(No space left"):
        save_profile(dataclasses.replace(first, name="second"), path)
    assert load_profile(path) == first  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["p.toml"]  # and no temp file is left


def test_a_file_without_name_is_named_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "my-run.toml"
    path.write_text("[train]\nmax_steps = 5\n")
    assert load_profile(path).name == "my-run"
    assert loads_profile("[train]\nmax_steps = 5\n").name == "custom"


# --------------------------------------------------------------------------- broken profiles

BROKEN = {
    "unknown_key": [
        f"train.bach_size = 8: unknown key; did you mean train.batch_size? (allowed: {TRAIN_KEYS})",
    ],
    "misplaced_key": [
        "lora.learning_rate = 0.0001: unknown key here; did you mean train.learning_rate? "
        "(allowed: rank, alpha, targets)",
        f"trian = {{max_steps = 100}}: unknown key; did you mean train? (allowed: {TOP_KEYS})",
        "train.max_steps = (not set): set exactly one of train.max_steps and train.epochs",
    ],
    "bad_type": [
        f'lora.targets = "q,v": expected a list, got a string (allowed: {TARGETS})',
        'train.batch_size = "4": expected an integer, got a string (allowed: 1 to 4096)',
        "train.packing = 1: expected true or false, got an integer (allowed: true, false)",
    ],
    "out_of_range": [
        "lora.rank = 0: too small (allowed: 1 to 512)",
        "lora.alpha = -16: too small (allowed: > 0)",
        "train.learning_rate = 3.0: too large (allowed: > 0 and <= 1)",
        "data.eval_fraction = 0.9: too large (allowed: > 0 and <= 0.5)",
    ],
    "float16": [f'model.dtype = "float16": {FLOAT16}'],
    "steps_and_epochs": [
        "train.epochs = 3: set only one of max_steps and epochs (max_steps = 100 is set too)",
    ],
    "no_length": [
        "train.max_steps = (not set): set exactly one of train.max_steps and train.epochs",
    ],
    "many_problems": [
        f'colour = "blue": unknown key (allowed: {TOP_KEYS})',
        'model.source = "embeded": unknown source; did you mean "embedded"? (allowed: '
        '"embedded", "tiny", a .gguf file, a keras-hub preset name or folder, '
        "a Hugging Face folder or hf://owner/name)",
        f'model.dtype = "float16": {FLOAT16}',
        "lora.rank = 4096: too large (allowed: 1 to 512)",
        f'lora.targets = ["q", "v", "x", "q"]: unknown item "x" (allowed: {TARGETS})',
        "train.batch_size = 0: too small (allowed: 1 to 4096)",
        'train.schedule = "cosin": unknown value "cosin"; did you mean "cosine"? '
        '(allowed: "cosine", "linear", "constant")',
        "train.epochs = 2: set only one of max_steps and epochs (max_steps = 100 is set too)",
        "train.warmup_ratio = 0.1: set only one of warmup_steps and warmup_ratio "
        "(warmup_steps = 10 is set too)",
        "train.loss_chunk_size = 2048: larger than train.sequence_length = 1024 "
        "(allowed: 0 (full logits) to 1024)",
        "data.eval_fraction = 0.1: set only one of eval_path and eval_fraction "
        '(eval_path = "eval.jsonl" is set too)',
        'data.columns = {messages = "dialog"}: unknown column key "messages" for format '
        '"alpaca" (allowed: prompt, query, response, system, history, id)',
    ],
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_profile_reports_every_problem_at_once(name: str) -> None:
    path = FIXTURES / f"{name}.toml"
    with pytest.raises(ProfileValidationError) as caught:
        load_profile(path)
    error = caught.value
    assert isinstance(error, ProfileError)
    assert error.message.splitlines() == [f"{path}: {line}" for line in BROKEN[name]]
    assert len(error.problems) == len(BROKEN[name])
    assert all(p.source == str(path) for p in error.problems)
    assert error.hint and "profiles" in error.hint
    # Rich and Textual read "[word]" as markup and drop it: messages must not contain any.
    assert not re.search(r"\[[a-z#/@][^\]]*\]", error.message)


def test_problems_are_structured_for_the_tui() -> None:
    with pytest.raises(ProfileValidationError) as caught:
        load_profile(FIXTURES / "out_of_range.toml")
    first = caught.value.problems[0]
    assert (first.key, first.value, first.reason, first.allowed) == (
        "lora.rank",
        0,
        "too small",
        "1 to 512",
    )
    missing = profile_problems({"train": {}})[0]
    assert missing.value is UNSET and missing.source is None
    assert str(missing) == (
        "train.max_steps = (not set): set exactly one of train.max_steps and train.epochs"
    )


@pytest.mark.parametrize(
    ("name", "message", "hint"),
    [
        (
            "syntax_error",
            "line 5, column 15: TOML syntax error: expected '=' after a key in a key/value pair.",
            "Line 5 reads: learning_rate 2e-4",
        ),
        (
            "unterminated",
            "line 2, column 19: TOML syntax error: illegal character '\\n'.",
            'Line 2 reads: source = "embedded',
        ),
    ],
)
def test_toml_syntax_error_names_file_line_and_column(name: str, message: str, hint: str) -> None:
    path = FIXTURES / f"{name}.toml"
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert not isinstance(caught.value, ProfileValidationError)
    assert caught.value.message == f"{path} {message}"
    assert caught.value.hint is not None and caught.value.hint.startswith(hint)


def test_syntax_error_at_end_of_document() -> None:
    with pytest.raises(ProfileError) as caught:
        loads_profile("[train]\nmax_steps = ", source="x.toml")
    assert caught.value.message == "x.toml line 2, column 13: TOML syntax error: invalid value."


def test_unreadable_files(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'[data]\ntrain_path = "caf\xe9.jsonl"\n')
    with pytest.raises(ProfileError) as caught:
        load_profile(latin1)
    assert caught.value.message == f"{latin1} line 2: not UTF-8 text."
    with pytest.raises(ProfileError) as caught:
        load_profile(tmp_path / "missing.toml")
    assert caught.value.message == f"{tmp_path / 'missing.toml'}: no such file."
    assert caught.value.hint is not None and "rtx3060-12gb" in caught.value.hint
    with pytest.raises(ProfileError) as caught:
        load_profile("rtx3060")
    assert (
        caught.value.message
        == 'No shipped profile is named "rtx3060"; did you mean "rtx3060-12gb"?'
    )


def test_profile_from_dict_without_a_source_and_not_a_table() -> None:
    with pytest.raises(ProfileValidationError) as caught:
        profile_from_dict({"train": 5})
    assert caught.value.message == (
        "train = 5: expected a table, got an integer (allowed: a table)"
    )
    assert profile_problems([], source="x")[0].reason == "expected a table, got a list"  # type: ignore[arg-type]


# --------------------------------------------------------------------------- combinations in code


def test_dataclasses_validate_and_normalise_in_code() -> None:
    with pytest.raises(ProfileValidationError) as caught:
        TrainConfig(batch_size=0, max_steps=1)
    assert (
        str(caught.value).splitlines()[0] == "train.batch_size = 0: too small (allowed: 1 to 4096)"
    )
    lora = LoraConfig(alpha=16, targets=["q", "k"])  # type: ignore[arg-type]
    assert lora.alpha == 16.0 and isinstance(lora.alpha, float)
    assert lora.targets == ("q", "k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        lora.rank = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        DataConfig(columns={"messages": "dialog"}).columns["role"] = "x"  # type: ignore[index]
    with pytest.raises(ProfileValidationError, match="repeated item"):
        LoraConfig(targets=("q", "q"))
    with pytest.raises(ProfileValidationError, match="must not be empty"):
        LoraConfig(targets=())
    with pytest.raises(ProfileValidationError, match="hf://owner/name"):
        ModelConfig(source="hf://gemma")
    with pytest.raises(ProfileValidationError, match="as long as the whole run"):
        TrainConfig(max_steps=10, warmup_steps=10)


def test_cross_section_combinations() -> None:
    train = TrainConfig(max_steps=10, eval_every=5)
    with pytest.raises(ProfileValidationError) as caught:
        Profile(train=train)
    assert caught.value.message == (
        "train.eval_every = 5: there is no eval data: set data.eval_fraction or "
        "data.eval_path, or eval_every = 0"
    )
    assert Profile(train=train, data=DataConfig(eval_path="e.jsonl")).train.eval_every == 5
    with pytest.raises(ProfileValidationError, match="float32 compute needs float32 weights"):
        Profile(train=TrainConfig(max_steps=1, precision="float32"))
    mixed = Profile(model=ModelConfig(dtype="float32"), train=TrainConfig(max_steps=1))
    assert mixed.keras_dtype_policy == "mixed_bfloat16"


def test_derived_values() -> None:
    train = TrainConfig(max_steps=100, batch_size=4, gradient_accumulation_steps=4)
    assert train.effective_batch_size == 16
    assert train.resolved_warmup_steps(100) == 0
    assert TrainConfig(epochs=1, warmup_ratio=0.03).resolved_warmup_steps(1000) == 30
    assert TrainConfig(epochs=1, warmup_steps=50).resolved_warmup_steps(20) == 20
    spec = DataConfig(format="chatml", columns={"messages": "m"}, max_chars=10).dataset_spec()
    assert (spec.format, spec.columns, spec.max_chars) == ("chatml", {"messages": "m"}, 10)
    assert DataConfig().dataset_spec().format is None


def test_replace_fields_applies_changes_together() -> None:
    profile = load_profile("rtx3060-12gb")
    changed = replace_fields(profile, {"train.epochs": None, "train.max_steps": 50, "name": "x"})
    assert (changed.train.max_steps, changed.train.epochs, changed.name) == (50, None, "x")
    assert changed.lora == profile.lora
    with pytest.raises(ProfileValidationError, match="set only one of max_steps and epochs"):
        replace_fields(profile, {"train.max_steps": 50})
    with pytest.raises(ProfileValidationError, match=r"did you mean lora\.rank"):
        replace_fields(profile, {"lora.rnak": 4})


# --------------------------------------------------------------------------- help and editing


def test_describe_fields_covers_every_field_with_help() -> None:
    infos = describe_fields()
    keys = [i.key for i in infos]
    assert len(keys) == len(set(keys))
    sections = (ModelConfig, LoraConfig, TrainConfig, DataConfig)
    expected = ["name", "description"] + [
        f"{cls.section}.{f.name}" for cls in sections for f in dataclasses.fields(cls)
    ]
    assert keys == expected
    for info in infos:
        assert info.help and info.allowed and info.type, info.key
    assert describe_field("train.batch_size") == FieldInfo(
        key="train.batch_size",
        section="train",
        name="batch_size",
        type="int",
        default=4,
        allowed="1 to 4096",
        help="Sequences per micro-batch (one forward and backward pass). Memory grows with "
        "batch_size x sequence_length.",
    )
    dtype = describe_field("model.dtype")
    assert dtype.choices == ("bfloat16", "float32") and dtype.default == "bfloat16"
    assert describe_field("lora.targets").choices == LORA_TARGETS == TARGETS_TUPLE
    assert describe_field("lora.targets").default == ("q", "v")
    warmup = describe_field("train.warmup_ratio")
    assert (warmup.optional, warmup.default, warmup.allowed) == (True, None, ">= 0 and < 1")
    assert describe_field("data.roles").choices == (
        "system",
        "user",
        "model",
        "tool_call",
        "tool_result",
    )
    with pytest.raises(ProfileError, match=r"did you mean train\.batch_size"):
        describe_field("train.bach_size")


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("train.batch_size", " 8 ", 8),
        ("train.max_steps", "1_000", 1000),
        ("train.learning_rate", "2e-4", 2e-4),
        ("lora.alpha", "16", 16.0),
        ("train.packing", "yes", True),
        ("train.remat", "False", False),
        ("model.dtype", "float32", "float32"),
        ("model.source", '"gemma3_instruct_1b"', "gemma3_instruct_1b"),
        ("model.source", "~/models/gemma-3-1b-it-Q8_0.gguf", "~/models/gemma-3-1b-it-Q8_0.gguf"),
        ("lora.targets", "q, k v", ("q", "k", "v")),
        ("lora.targets", '["gate", "up"]', ("gate", "up")),
        ("train.warmup_ratio", "", None),
        (
            "data.columns",
            'messages = dialog, role="speaker"',
            {"messages": "dialog", "role": "speaker"},
        ),
        ("data.roles", '{bot = "model"}', {"bot": "model"}),
    ],
)
def test_validate_field_parses_typed_text(key: str, text: str, value: object) -> None:
    result = validate_field(key, text)
    assert result.ok, result.problems
    assert result.value == value
    assert type(result.value) is type(value) or isinstance(value, dict)


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("train.batch_size", "0", "train.batch_size = 0: too small (allowed: 1 to 4096)"),
        (
            "train.batch_size",
            "four",
            'train.batch_size = "four": expected an integer (allowed: 1 to 4096)',
        ),
        ("train.batch_size", "", 'train.batch_size = "": expected an integer (allowed: 1 to 4096)'),
        ("model.dtype", "float16", f'model.dtype = "float16": {FLOAT16}'),
        (
            "train.schedule",
            "Cosine",
            'train.schedule = "Cosine": unknown value "Cosine"; did you mean "cosine"? '
            '(allowed: "cosine", "linear", "constant")',
        ),
        (
            "lora.targets",
            "q, x",
            f'lora.targets = ["q", "x"]: unknown item "x" (allowed: {TARGETS})',
        ),
        (
            "train.packing",
            "maybe",
            'train.packing = "maybe": expected true or false (allowed: true, false)',
        ),
        (
            "data.roles",
            "bot = robot",
            'data.roles = {bot = "robot"}: bot: unknown value "robot" (allowed: values '
            '"system", "user", "model", "tool_call", "tool_result")',
        ),
        (
            "train.bach_size",
            "4",
            'train.bach_size = "4": Unknown profile key train.bach_size; did you mean '
            "train.batch_size?",
        ),
    ],
)
def test_validate_field_reports_problems(key: str, text: str, message: str) -> None:
    result = validate_field(key, text)
    assert not result.ok and result.value is None
    assert [str(p) for p in result.problems] == [message]
    assert all(isinstance(p, Problem) for p in result.problems)


# --------------------------------------------------------------------------- imports


def test_importing_profiles_stays_light() -> None:
    code = (
        "import sys, pipeline.profiles; "
        "heavy = ('jax', 'keras', 'keras_hub', 'textual', 'numpy'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
