"""Loader: sources, the four file types, streaming of JSON arrays, format detection."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.jsonio import JsonArraySplitter
from pipeline.data.loader import (
    BadRecord,
    RawRecord,
    detect_format,
    open_reader,
    read_records,
    resolve_sources,
)
from pipeline.data.types import DatasetSpec, Issue
from pipeline.errors import DatasetError

SHAREGPT = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
ALPACA = {"instruction": "Say hi", "input": "", "output": "hi"}
CHATML = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def records(path: Path, spec: DatasetSpec | None = None) -> list[RawRecord]:
    out = [r for r in read_records(path, spec=spec) if isinstance(r, RawRecord)]
    return out


# ----------------------------------------------------------------------------- sources


def test_resolve_file_folder_glob_and_list(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "b.jsonl", [SHAREGPT])
    b = write_jsonl(tmp_path / "a.json", [])
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / ".hidden.jsonl").write_text("")
    sub = tmp_path / "sub"
    sub.mkdir()
    c = write_jsonl(sub / "c.jsonl", [SHAREGPT])

    assert resolve_sources(a) == [a]
    assert resolve_sources(str(a)) == [a]
    # folder: supported, non-hidden files, sorted, not recursive
    assert resolve_sources(tmp_path) == [b, a]
    # glob: unsupported matches are skipped when a supported one matches
    assert resolve_sources(str(tmp_path / "*")) == [b, a]
    assert resolve_sources(str(tmp_path / "**" / "*.jsonl")) == [a, c]
    # list: order kept, duplicates dropped
    assert resolve_sources([c, a, str(a)]) == [c, a]


def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as err:
        resolve_sources(tmp_path / "missing.jsonl")
    assert err.value.hint
    with pytest.raises(DatasetError, match="matches no file"):
        resolve_sources(str(tmp_path / "*.jsonl"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"unsupported file type '\.txt'"):
        resolve_sources(tmp_path / "data.txt")
    with pytest.raises(DatasetError, match="unsupported file type"):
        resolve_sources(str(tmp_path / "*.txt"))
    with pytest.raises(DatasetError, match="holds no dataset file"):
        resolve_sources(tmp_path)
    with pytest.raises(DatasetError, match="no dataset given"):
        resolve_sources([])


# ----------------------------------------------------------------------------- JSONL / JSON


def test_jsonl_records_have_lines_indices_and_spans(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n\n   \n{"b": "\xc3\xa9"}\r\n{"c": 3}')
    got = records(path)
    assert [(r.ref.index, r.ref.line, r.data) for r in got] == [
        (0, 1, {"a": 1}),
        (1, 4, {"b": "é"}),
        (2, 5, {"c": 3}),
    ]
    raw = path.read_bytes()
    for r in got:
        assert r.span is not None
        start, length = r.span
        assert json.loads(raw[start : start + length]) == r.data


def test_json_array_is_streamed_with_start_lines(tmp_path: Path) -> None:
    rows = [{"i": i, "text": 'x]}"{[' * (i % 7), "nested": [{"a": [i]}]} for i in range(300)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    text = path.read_text(encoding="utf-8").splitlines()
    got = records(path)
    assert [r.data for r in got] == rows
    for r in got:
        assert r.ref.line is not None
        assert text[r.ref.line - 1].strip() == "{"
    # The splitter gives the same pieces whatever the chunk size (strings cut anywhere).
    with path.open("rb") as f:
        f.seek(1)
        pieces = [p.data for p in JsonArraySplitter(f, offset=1, line=1, chunk_size=7)]
    assert [json.loads(p) for p in pieces] == rows


def test_splitter_stops_on_an_element_over_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[{"a": 1},\n{"b": [' + '"x", ' * 100 + "\n")
    with path.open("rb") as f:
        f.seek(1)
        pieces = list(JsonArraySplitter(f, offset=1, line=1, chunk_size=16, max_element_bytes=64))
    assert [(p.kind, p.line) for p in pieces] == [("element", 1), ("too_large", 2)]


def test_json_file_holding_json_lines_is_read_as_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "lines.json", [SHAREGPT, ALPACA])
    got = records(path)
    assert [(r.ref.line, r.data) for r in got] == [(1, SHAREGPT), (2, ALPACA)]


def test_reader_read_at_gives_the_same_record(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([SHAREGPT, ALPACA, CHATML], indent=1), encoding="utf-8")
    reader = open_reader(path)
    items = [i for i in reader if isinstance(i, RawRecord)]
    assert [reader.read_at(i.ref, i.span) for i in items] == items


# ----------------------------------------------------------------------------- CSV


def test_csv_parses_json_cells_and_drops_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["conversations", "system", "tools"])
        w.writerow([json.dumps(SHAREGPT["conversations"]), "", "[]"])
        w.writerow([json.dumps([{"from": "human", "value": "line1\nline2"}]), "be nice", ""])
    got = records(path)
    assert got[0].data == {"conversations": SHAREGPT["conversations"], "tools": "[]"}
    assert got[0].ref.line == 2
    assert got[1].data["conversations"][0]["value"] == "line1\nline2"
    assert got[1].data["system"] == "be nice"
    assert got[1].ref.line == 3
    reader = open_reader(path)
    items = [i for i in reader if isinstance(i, RawRecord)]
    assert [reader.read_at(i.ref, i.span) for i in items] == items


def test_csv_configured_message_column_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dialog"])
        w.writerow([json.dumps(SHAREGPT["conversations"])])
    spec = DatasetSpec("sharegpt", columns={"messages": "dialog"})
    assert records(path, spec)[0].data == {"dialog": SHAREGPT["conversations"]}
    assert records(path)[0].data == {"dialog": json.dumps(SHAREGPT["conversations"])}


def test_csv_multiline_rows_keep_their_start_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        'instruction,output\n"multi\nline\nprompt",answer\nsecond,row\n', encoding="utf-8"
    )
    got = records(path)
    assert [(r.ref.line, r.data["instruction"]) for r in got] == [
        (2, "multi\nline\nprompt"),
        (5, "second"),
    ]


# ----------------------------------------------------------------------------- Parquet


def test_parquet_rows_nested_and_nulls(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    table = pa.Table.from_pylist(
        [
            {"conversations": SHAREGPT["conversations"], "system": None},
            {"conversations": SHAREGPT["conversations"], "system": "sys"},
        ]
    )
    pq.write_table(table, path, row_group_size=1)
    got = records(path)
    assert [r.data for r in got] == [
        {"conversations": SHAREGPT["conversations"]},
        {"conversations": SHAREGPT["conversations"], "system": "sys"},
    ]
    assert [(r.ref.index, r.ref.line, r.span) for r in got] == [(0, None, None), (1, None, None)]
    reader = open_reader(path)
    assert reader.read_at(got[1].ref, None) == got[1]
    assert reader.read_at(got[0].ref, None) == got[0]


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("row", "fmt"),
    [(SHAREGPT, "sharegpt"), (ALPACA, "alpaca"), (CHATML, "chatml")],
)
def test_detect_format(tmp_path: Path, row: dict[str, object], fmt: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [row, row])
    assert detect_format(path) == fmt


def test_detect_format_skips_broken_lines_and_uses_the_majority(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        "not json\n" + "\n".join(json.dumps(r) for r in [ALPACA, SHAREGPT, SHAREGPT]) + "\n"
    )
    assert detect_format(path) == "sharegpt"


def test_detect_format_override_and_custom_names(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [ALPACA])
    assert detect_format(path, DatasetSpec("chatml")) == "chatml"
    custom = write_jsonl(tmp_path / "c.jsonl", [{"dialog": SHAREGPT["conversations"]}])
    assert detect_format(custom, DatasetSpec(columns={"messages": "dialog"})) == "sharegpt"
    # Both chat formats named the same: the first turn's keys decide.
    same = write_jsonl(tmp_path / "s.jsonl", [{"messages": CHATML["messages"]}])
    spec = DatasetSpec(columns={"messages": "messages"})
    assert detect_format(same, spec) == "chatml"


def test_detect_format_error_names_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DatasetError) as err:
        detect_format(path)
    assert "['answer', 'question']" in err.value.message
    assert "'instruction'" in err.value.message and "'conversations'" in err.value.message
    assert err.value.hint and "DatasetSpec" in err.value.hint
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError, match="no readable record"):
        detect_format(empty)


def test_read_records_flattens_bad_records_to_issues(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{oops\n')
    items = list(read_records(path))
    assert isinstance(items[0], RawRecord)
    assert isinstance(items[1], Issue) and items[1].code == "malformed_json"
    assert not any(isinstance(i, BadRecord) for i in items)
