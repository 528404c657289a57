"""Validation: the streaming core, the report, events and cancelling."""

from __future__ import annotations

import csv
import gc
import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.types import DatasetSpec, Issue
from pipeline.data.validate import iter_checked, validate_dataset
from pipeline.errors import DatasetError, JobCancelled
from pipeline.events import Event, LogLine, Progress, StageDone

GOOD = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}


def jsonl(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "count", "fmt"),
    [
        ("alpaca_en_demo.json", 999, "alpaca"),
        ("identity.json", 91, "alpaca"),
        ("glaive_toolcall_en_demo.json", 300, "sharegpt"),
    ],
)
def test_shared_datasets_are_all_valid(
    shared_datasets: Path, name: str, count: int, fmt: str
) -> None:
    path = shared_datasets / name
    report = validate_dataset(path)
    assert (report.total, report.valid, report.invalid) == (count, count, 0)
    assert report.formats == {str(path): fmt}
    assert report.issues == () and report.issue_count == 0 and report.ok


def test_glaive_tool_turns(shared_datasets: Path) -> None:
    convs = [c.conversation for c in iter_checked(shared_datasets / "glaive_toolcall_en_demo.json")]
    assert all(c is not None for c in convs)
    roles = [t.role for c in convs if c is not None for t in c.turns]
    assert (roles.count("tool_call"), roles.count("tool_result")) == (211, 211)
    assert (roles.count("user"), roles.count("model")) == (746, 746)
    assert all(c is not None and c.tools is not None for c in convs)


def test_folder_and_glob_mix_formats(tmp_path: Path) -> None:
    jsonl(tmp_path / "a.jsonl", [GOOD, GOOD])
    (tmp_path / "b.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    with (tmp_path / "c.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages"])
        w.writerow(
            [json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])]
        )
    pq.write_table(pa.Table.from_pylist([GOOD]), tmp_path / "d.parquet")
    report = validate_dataset(tmp_path)
    assert (report.total, report.valid) == (5, 5)
    assert report.formats == {
        str(tmp_path / "a.jsonl"): "sharegpt",
        str(tmp_path / "b.json"): "alpaca",
        str(tmp_path / "c.csv"): "chatml",
        str(tmp_path / "d.parquet"): "sharegpt",
    }
    globbed = validate_dataset(str(tmp_path / "*.json*"))
    assert globbed.sources == (str(tmp_path / "a.jsonl"), str(tmp_path / "b.json"))
    assert globbed.total == 3
    # records come in file order, with their own paths and indices
    refs = [(Path(c.ref.path).name, c.ref.index) for c in iter_checked(tmp_path)]
    assert refs == [("a.jsonl", 0), ("a.jsonl", 1), ("b.json", 0), ("c.csv", 0), ("d.parquet", 0)]


def test_format_override(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [GOOD])
    report = validate_dataset(path, DatasetSpec("alpaca"))
    assert report.formats == {str(path): "alpaca"}
    assert report.invalid == 1
    assert [(i.code, i.field) for i in report.issues] == [
        ("missing_field", "instruction"),
        ("missing_field", "output"),
    ]


def test_unknown_format_marks_that_files_rows_and_checks_the_others(tmp_path: Path) -> None:
    jsonl(tmp_path / "a.jsonl", [GOOD])
    jsonl(tmp_path / "b.jsonl", [{"question": "q"}, {"question": "r"}])
    events: list[Event] = []
    report = validate_dataset(tmp_path, on_event=events.append)
    assert (report.total, report.valid, report.invalid) == (3, 1, 2)
    assert report.counts_by_code == {"unknown_format": 2}
    issue = report.issues[0]
    assert (issue.path, issue.line, issue.index) == (str(tmp_path / "b.jsonl"), 1, 0)
    assert "['question']" in issue.reason and "'instruction'" in issue.reason
    assert any(isinstance(e, LogLine) and e.level == "error" for e in events)


def test_duplicate_ids_across_chunks_and_files(tmp_path: Path) -> None:
    rows = [{**GOOD, "id": f"r{i % 5}"} for i in range(12)]
    jsonl(tmp_path / "a.jsonl", rows[:6])
    jsonl(tmp_path / "b.jsonl", rows[6:])
    checked = list(iter_checked(tmp_path, chunk_size=4))
    dup = [c for c in checked if c.issues]
    assert [(Path(c.ref.path).name, c.ref.line) for c in dup] == [
        ("a.jsonl", 6),
        ("b.jsonl", 1),
        ("b.jsonl", 2),
        ("b.jsonl", 3),
        ("b.jsonl", 4),
        ("b.jsonl", 5),
        ("b.jsonl", 6),
    ]
    first = dup[0].issues[0]
    assert (first.code, first.field) == ("duplicate_id", "id")
    assert f"{tmp_path / 'a.jsonl'} line 1" in first.reason
    # No ids: no duplicate check.
    jsonl(tmp_path / "c.jsonl", [GOOD, GOOD])
    assert validate_dataset(tmp_path / "c.jsonl").valid == 2


def test_progress_and_stage_done(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [GOOD] * 3000)
    events: list[Event] = []
    report = validate_dataset(path, on_event=events.append)
    assert report.valid == 3000
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1] == Progress("validate", path.stat().st_size, path.stat().st_size, "bytes")
    assert isinstance(events[-1], StageDone) and "3,000 valid" in events[-1].summary


def test_cancel_raises_job_cancelled(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [GOOD] * 3000)
    with pytest.raises(JobCancelled):
        validate_dataset(path, should_stop=lambda: True)


def test_bad_source_fails_at_call_time(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        iter_checked(tmp_path / "nope.jsonl")


def test_report_caps_issues_but_counts_all(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("oops\n" * 50)
    report = validate_dataset(path, max_issues=10)
    assert report.invalid == 50
    assert len(report.issues) == 10 and report.issue_count == 50
    assert report.counts_by_code == {"malformed_json": 50}
    assert not report.ok


def test_file_issues_go_to_the_callback_and_the_report(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    seen: list[Issue] = []
    checked = list(iter_checked(path, on_file_issue=seen.append))
    assert [i.code for i in seen] == ["bom"]
    assert checked[0].conversation is not None and checked[0].issues == ()
    report = validate_dataset(path)
    assert report.ok and report.valid == 1 and report.counts_by_code == {"bom": 1}


def test_max_chars_is_configurable(tmp_path: Path) -> None:
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x" * 50}]}
    path = jsonl(tmp_path / "d.jsonl", [row])
    assert validate_dataset(path).valid == 1
    report = validate_dataset(path, DatasetSpec(max_chars=49))
    assert [(i.code, i.field) for i in report.issues] == [
        ("text_too_long", "conversations[1].value")
    ]


def test_gc_thresholds_come_back_after_a_stream(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [GOOD] * 10)
    before = gc.get_threshold()
    stream = iter_checked(path)
    next(stream)
    assert gc.get_threshold()[0] >= 50_000  # raised while the stream runs
    del stream  # abandoned half-way: closing the generator restores them
    assert gc.get_threshold() == before
    assert sum(1 for _ in iter_checked(path)) == 10
    assert gc.get_threshold() == before
