"""A corpus of broken files and rows: each must be reported exactly where it is.

Every case writes a real file into ``tmp_path`` (good rows around the bad one where that makes
sense), validates it, and asserts the exact issues: code, line, record index and field, and
how many rows are still valid (a broken row never stops the others from being checked).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.types import DatasetSpec
from pipeline.data.validate import convert_dataset, iter_checked, validate_dataset
from pipeline.errors import DatasetError

HUMAN = {"from": "human", "value": "q"}
GPT = {"from": "gpt", "value": "a"}
GOOD = {"conversations": [HUMAN, GPT]}
ALPACA = {"instruction": "q", "output": "a"}


def lines(*rows: object) -> bytes:
    """JSONL: dicts are dumped, bytes are written as they are."""
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def conv(*turns: tuple[str, str], **extra: object) -> dict[str, object]:
    return {"conversations": [{"from": f, "value": v} for f, v in turns], **extra}


def write_csv(rows: list[list[str]]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)

    return write


def write_parquet(rows: list[dict[str, object]]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        pq.write_table(pa.Table.from_pylist(rows), path)

    return write


Expected = tuple[str, int | None, int | None, str]  # code, line, index, field


@dataclass
class Case:
    name: str
    filename: str
    content: bytes | Callable[[Path], None]
    expected: list[Expected]
    valid: int
    spec: DatasetSpec = field(default_factory=DatasetSpec)
    reason_has: str = ""


CASES = [
    Case(
        "malformed_json_line",
        "d.jsonl",
        lines(GOOD, b'{"conversations": [}', GOOD),
        [("malformed_json", 2, 1, "")],
        2,
        reason_has="column 20",
    ),
    Case(
        "truncated_last_line",
        "d.jsonl",
        lines(GOOD, GOOD)[:-1] + b'\n{"conversations": [{"from": "hu',
        [("truncated_json", 3, 2, "")],
        2,
        reason_has="truncated",
    ),
    Case(
        "line_cut_in_the_middle_of_the_file",
        "d.jsonl",
        lines(GOOD, b'{"conversations": [{"from": "human", "value": "q"}', GOOD),
        [("malformed_json", 2, 1, "")],
        2,
        reason_has="one complete JSON object",
    ),
    Case(
        "value_not_an_object",
        "d.jsonl",
        lines(GOOD, [GOOD], b'"text"', GOOD),
        [("not_an_object", 2, 1, ""), ("not_an_object", 3, 2, "")],
        2,
        reason_has="JSON array",
    ),
    Case(
        "json_array_record_with_syntax_error",
        "d.json",
        b'[\n  {"conversations": [\n    {"from": "human", "value": "q"},\n'
        b'    {"from": "gpt" "value": "a"}\n  ]},\n' + json.dumps(GOOD).encode() + b"\n]\n",
        [("malformed_json", 4, 0, "")],
        1,
        reason_has="line 4 column 20",
    ),
    Case(
        "json_array_missing_comma_between_records",
        "d.json",
        b"[\n" + json.dumps(GOOD).encode() + b"\n" + json.dumps(GOOD).encode() + b"\n]",
        [("malformed_json", 3, None, "")],
        2,
        reason_has="missing ','",
    ),
    Case(
        "json_array_trailing_comma",
        "d.json",
        b"[\n" + json.dumps(GOOD).encode() + b",\n]",
        [("malformed_json", 3, None, "")],
        1,
        reason_has="extra ','",
    ),
    Case(
        "json_array_not_closed",
        "d.json",
        b"[\n" + json.dumps(GOOD).encode() + b",\n" + json.dumps(GOOD).encode() + b"\n",
        [("truncated_json", 4, None, "")],
        2,
    ),
    Case(
        "json_array_record_cut_off",
        "d.json",
        b"[\n" + json.dumps(GOOD).encode() + b',\n{"conversations": [',
        [("truncated_json", 3, 1, "")],
        1,
    ),
    Case(
        "json_array_scalar_element",
        "d.json",
        b"[\n" + json.dumps(GOOD).encode() + b",\n  42,\n" + json.dumps(GOOD).encode() + b"\n]",
        [("not_an_object", 3, 1, "")],
        2,
        reason_has="number",
    ),
    Case(
        "json_file_not_an_array",
        "d.json",
        b'"just a string"',
        [("not_an_array", 1, None, "")],
        0,
    ),
    Case(
        "wrong_type_number_as_text",
        "d.jsonl",
        lines(GOOD, conv(("human", "q")) | {"conversations": [HUMAN, {"from": "gpt", "value": 5}]}),
        [("wrong_type", 2, 1, "conversations[1].value")],
        1,
        reason_has="a number (5)",
    ),
    Case(
        "conversations_not_a_list",
        "d.jsonl",
        lines({"conversations": "hi"}, GOOD),
        [("wrong_type", 1, 0, "conversations")],
        1,
    ),
    Case(
        "missing_field",
        "d.jsonl",
        lines(ALPACA, {"instruction": "q"}),
        [("missing_field", 2, 1, "output")],
        1,
    ),
    Case(
        "missing_role_in_turn",
        "d.jsonl",
        lines({"conversations": [{"value": "q"}, GPT]}),
        [("missing_field", 1, 0, "conversations[0].from")],
        0,
    ),
    Case(
        "empty_field",
        "d.jsonl",
        lines(ALPACA, {"instruction": "q", "output": ""}),
        [("empty_field", 2, 1, "output")],
        1,
        reason_has="is empty",
    ),
    Case(
        "whitespace_only_text",
        "d.jsonl",
        lines(conv(("human", "q"), ("gpt", " \n\t ")), GOOD),
        [("empty_field", 1, 0, "conversations[1].value")],
        1,
        reason_has="only whitespace",
    ),
    Case(
        "empty_conversation_list",
        "d.jsonl",
        lines({"conversations": []}, GOOD),
        [("empty_field", 1, 0, "conversations")],
        1,
    ),
    Case(
        "unknown_role",
        "d.jsonl",
        lines(conv(("human", "q"), ("bot", "a")), GOOD),
        [("unknown_role", 1, 0, "conversations[1].from")],
        1,
        reason_has="DatasetSpec.roles",
    ),
    Case(
        "not_alternating",
        "d.jsonl",
        lines(
            GOOD, conv(("human", "q"), ("gpt", "a"), ("human", "b"), ("human", "c"), ("gpt", "d"))
        ),
        [("not_alternating", 2, 1, "conversations[3].from")],
        1,
        reason_has="merge the two turns",
    ),
    Case(
        "starts_with_model_turn",
        "d.jsonl",
        lines(conv(("gpt", "a"), ("human", "q"), ("gpt", "b"))),
        [("not_alternating", 1, 0, "conversations[0].from")],
        0,
        reason_has="must start with a user turn",
    ),
    Case(
        "no_model_turn",
        "d.jsonl",
        lines(conv(("system", "s"), ("human", "q")), GOOD),
        [("no_model_turn", 1, 0, "conversations")],
        1,
    ),
    Case(
        "ends_with_user_turn",
        "d.jsonl",
        lines(conv(("human", "q"), ("gpt", "a"), ("human", "again")), GOOD),
        [("not_ending_with_model", 1, 0, "conversations[2].from")],
        1,
    ),
    Case(
        "system_turn_not_first",
        "d.jsonl",
        lines(conv(("human", "q"), ("gpt", "a"), ("system", "s"), ("human", "b"), ("gpt", "c"))),
        [("system_not_first", 1, 0, "conversations[2].from")],
        0,
    ),
    Case(
        "system_column_and_system_turn",
        "d.jsonl",
        lines(conv(("system", "s2"), ("human", "q"), ("gpt", "a"), system="s1")),
        [("system_not_first", 1, 0, "conversations[0].from")],
        0,
    ),
    Case(
        "text_over_max_length",
        "d.jsonl",
        lines(GOOD, conv(("human", "q"), ("gpt", "x" * 101))),
        [("text_too_long", 2, 1, "conversations[1].value")],
        1,
        spec=DatasetSpec(max_chars=100),
        reason_has="101 characters",
    ),
    Case(
        "invalid_utf8",
        "d.jsonl",
        lines(GOOD, b'{"conversations": [{"from": "human", "value": "caf\xe9"}]}', GOOD),
        [("invalid_utf8", 2, 1, "")],
        2,
        reason_has="byte offset 50 of line 2 (byte 0xE9)",
    ),
    Case(
        "bom",
        "d.jsonl",
        b"\xef\xbb\xbf" + lines(GOOD, GOOD),
        [("bom", 1, None, "")],
        2,
        reason_has="count as valid",
    ),
    Case(
        "bom_in_json_array",
        "d.json",
        b"\xef\xbb\xbf" + json.dumps([GOOD]).encode(),
        [("bom", 1, None, "")],
        1,
    ),
    Case(
        "duplicate_id",
        "d.jsonl",
        lines(GOOD | {"id": "a"}, GOOD | {"id": "b"}, GOOD | {"id": "a"}),
        [("duplicate_id", 3, 2, "id")],
        2,
        reason_has="line 1",
    ),
    Case("empty_file", "d.jsonl", b"", [("empty_file", None, None, "")], 0),
    Case("only_blank_lines", "d.jsonl", b"\n  \n\r\n\n", [("empty_file", None, None, "")], 0),
    Case("empty_json_file", "d.json", b"  \n", [("empty_file", None, None, "")], 0),
    Case("empty_json_array", "d.json", b"[ ]", [("empty_file", None, None, "")], 0),
    Case(
        "csv_bad_json_cell",
        "d.csv",
        write_csv(
            [
                ["conversations"],
                [json.dumps(GOOD["conversations"])],
                ['[{"from": "human", "value": "q"'],
            ]
        ),
        [("csv_bad_json_cell", 3, 1, "conversations")],
        1,
    ),
    Case(
        "csv_missing_column",
        "d.csv",
        write_csv([["instruction", "input"], ["q", ""], ["r", "x"]]),
        [("missing_field", 2, 0, "output"), ("missing_field", 3, 1, "output")],
        0,
    ),
    Case(
        "csv_row_with_extra_cells",
        "d.csv",
        write_csv([["instruction", "output"], ["q", "a"], ["q", "a", "surplus"]]),
        [("csv_bad_row", 3, 1, "")],
        1,
    ),
    Case(
        "csv_invalid_utf8",
        "d.csv",
        b"instruction,output\nq,a\ncaf\xe9,a\n",
        [("invalid_utf8", 3, 1, "")],
        1,
    ),
    Case(
        "csv_bom",
        "d.csv",
        b"\xef\xbb\xbfinstruction,output\nq,a\n",
        [("bom", 1, None, "")],
        1,
    ),
    Case(
        "csv_empty_cell_is_missing",
        "d.csv",
        write_csv([["instruction", "output"], ["q", ""]]),
        [("missing_field", 2, 0, "output")],
        0,
    ),
    Case(
        "parquet_wrong_column_type",
        "d.parquet",
        write_parquet([{"instruction": "q", "output": 1}, {"instruction": "q", "output": 2}]),
        [("wrong_type", None, 0, "output"), ("wrong_type", None, 1, "output")],
        0,
    ),
    Case(
        "parquet_not_parquet",
        "d.parquet",
        b"this is not parquet",
        [("bad_parquet", None, None, "")],
        0,
    ),
    Case(
        "alpaca_history_not_a_list",
        "d.jsonl",
        lines(ALPACA | {"history": "q a"}),
        [("wrong_type", 1, 0, "history")],
        0,
    ),
    Case(
        "alpaca_history_not_pairs",
        "d.jsonl",
        lines(ALPACA | {"history": [["q", "a"], ["only one"]]}, ALPACA | {"history": [["q", 1]]}),
        [("wrong_type", 1, 0, "history[1]"), ("wrong_type", 2, 1, "history[0][1]")],
        0,
    ),
    Case(
        "chatml_content_part_without_text",
        "d.jsonl",
        lines(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text"}]},
                    {"role": "assistant", "content": "a"},
                ]
            }
        ),
        [("missing_field", 1, 0, "messages[0].content[0].text")],
        0,
    ),
    Case(
        "chatml_image_part",
        "d.jsonl",
        lines(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
                    {"role": "assistant", "content": "a"},
                ]
            }
        ),
        [("unsupported_content", 1, 0, "messages[0].content[0].type")],
        0,
    ),
    Case(
        "chatml_text_and_tool_calls",
        "d.jsonl",
        lines(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {
                        "role": "assistant",
                        "content": "let me look",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                    },
                ]
            }
        ),
        [("content_with_tool_calls", 1, 0, "messages[1].content")],
        0,
    ),
    Case(
        "chatml_tool_call_without_name",
        "d.jsonl",
        lines(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]},
                ]
            }
        ),
        [("missing_field", 1, 0, "messages[1].tool_calls[0].function.name")],
        0,
    ),
    Case(
        "tools_not_json",
        "d.jsonl",
        lines(GOOD | {"tools": "[{name: f}]"}),
        [("bad_tools", 1, 0, "tools")],
        0,
    ),
    Case(
        "unknown_format",
        "d.jsonl",
        lines({"prompt": "q", "completion": "a"}),
        [("unknown_format", 1, 0, "")],
        0,
        reason_has="['completion', 'prompt']",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_reported_exactly(tmp_path: Path, case: Case) -> None:
    path = tmp_path / case.filename
    if isinstance(case.content, bytes):
        path.write_bytes(case.content)
    else:
        case.content(path)
    report = validate_dataset(path, case.spec)
    got = [(i.code, i.line, i.index, i.field) for i in report.issues]
    assert got == case.expected
    assert report.valid == case.valid
    for issue in report.issues:
        assert issue.path == str(path)
        assert len(issue.reason) > 20
        assert issue.severity == ("warning" if issue.code == "bom" else "error")
    if case.reason_has:
        assert any(case.reason_has in i.reason for i in report.issues), report.issues
    # Nothing is dropped: every record is either written or rejected.
    rows = sum(1 for _ in iter_checked(path, case.spec))
    result = convert_dataset(path, tmp_path / "out" / "o.jsonl", spec=case.spec)
    assert result.valid + result.rejected == rows == report.total
    assert result.valid == case.valid


def test_corpus_covers_enough_kinds() -> None:
    assert len({c.name for c in CASES}) >= 20
    assert len({e[0] for c in CASES for e in c.expected}) >= 20


def test_invalid_and_whole_file_issues_in_one_folder(tmp_path: Path) -> None:
    """Broken files beside good ones: all read, all reported, in file order."""
    (tmp_path / "a.jsonl").write_bytes(lines(GOOD))
    (tmp_path / "b.jsonl").write_bytes(b"")
    (tmp_path / "c.json").write_bytes(b"[\n" + json.dumps(GOOD).encode())
    (tmp_path / "d.jsonl").write_bytes(lines(b"{", GOOD))
    report = validate_dataset(tmp_path)
    assert (report.total, report.valid) == (4, 3)
    assert [(Path(i.path).name, i.code) for i in report.issues] == [
        ("b.jsonl", "empty_file"),
        ("c.json", "truncated_json"),
        ("d.jsonl", "malformed_json"),
    ]


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda p: p / "data.txt", "unsupported file type '.txt'"),
        (lambda p: p / "data", "unsupported file type '(no extension)'"),
        (lambda p: p / "missing.jsonl", "does not exist"),
        (lambda p: str(p / "*.parquet"), "matches no file"),
    ],
    ids=["unsupported_extension", "no_extension", "nonexistent_path", "glob_matching_nothing"],
)
def test_unreadable_sources_raise_dataset_error(
    tmp_path: Path, make: Callable[[Path], object], pattern: str
) -> None:
    (tmp_path / "data.txt").write_text("x")
    (tmp_path / "data").write_text("x")
    with pytest.raises(DatasetError) as err:
        validate_dataset(make(tmp_path))  # type: ignore[arg-type]
    assert pattern in err.value.message
    assert err.value.hint
