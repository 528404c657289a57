"""Random access for the TUI: one pass, then any record again by offset."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.browse import open_dataset
from pipeline.data.validate import iter_checked
from pipeline.errors import DatasetError, JobCancelled
from pipeline.events import Event, Progress, StageDone

GOOD = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
BAD_TURNS = {"conversations": [{"from": "human", "value": "q"}]}


def make_mixed(folder: Path) -> None:
    """Four file types, valid and invalid rows, a BOM and an empty file."""
    (folder / "a.jsonl").write_bytes(
        b"\xef\xbb\xbf"
        + b"\n".join(
            [
                json.dumps(GOOD).encode(),
                b"{broken",
                json.dumps(BAD_TURNS).encode(),
                b"",
                b'{"conversations": [{"from": "human", "value": "\xff"}]}',
                json.dumps({**GOOD, "id": "x"}).encode(),
            ]
        )
        + b"\n"
    )
    (folder / "b.json").write_text(
        json.dumps([{"instruction": "q", "output": "a"}, 5, {"instruction": "q"}], indent=2)
    )
    (folder / "c.jsonl").write_text("")
    with (folder / "d.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["conversations", "system"])
        w.writerow([json.dumps(GOOD["conversations"]), "multi\nline"])
        w.writerow(["[not json", ""])
    pq.write_table(
        pa.Table.from_pylist([GOOD, {"conversations": [{"from": "human", "value": None}]}, GOOD]),
        folder / "e.parquet",
        row_group_size=2,
    )


def test_checked_matches_the_streaming_pass(tmp_path: Path) -> None:
    make_mixed(tmp_path)
    streamed = list(iter_checked(tmp_path))
    events: list[Event] = []
    ds = open_dataset(tmp_path, on_event=events.append)
    assert len(ds) == len(streamed) == 13
    for i in reversed(range(len(ds))):  # any order: every read seeks
        assert ds.checked(i) == streamed[i], i
    assert list(ds.error_indices) == [i for i, c in enumerate(streamed) if c.conversation is None]
    assert list(ds.error_indices) == [1, 2, 3, 6, 7, 9, 11]
    for i in ds.error_indices:
        assert ds.issues_for(i) == streamed[i].issues != ()
    assert ds.issues_for(0) == ()
    assert ds.report.total == 13 and ds.report.invalid == 7
    assert {i.code for i in ds.report.issues if i.index is None} == {"bom", "empty_file"}
    assert ds.formats[str(tmp_path / "b.json")] == "alpaca"
    assert ds.paths == tuple(sorted(tmp_path.iterdir()))
    assert any(isinstance(e, Progress) and e.stage == "open" for e in events)
    assert isinstance(events[-1], StageDone)
    assert ds.checked(-1) == streamed[-1]
    with pytest.raises(IndexError):
        ds.checked(13)


def test_next_and_previous_error(tmp_path: Path) -> None:
    make_mixed(tmp_path)
    ds = open_dataset(tmp_path)
    assert ds.next_error(-1) == 1
    assert ds.next_error(1) == 2
    assert ds.next_error(5) == 6
    assert ds.next_error(11) is None
    assert ds.previous_error(1) is None
    assert ds.previous_error(7) == 6
    assert ds.previous_error(100) == 11


def test_changed_file_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    ds = open_dataset(path)
    assert ds.checked(0).conversation is not None
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(DatasetError, match="changed since"):
        ds.checked(0)
    path.unlink()
    with pytest.raises(DatasetError, match="cannot be read"):
        ds.checked(0)


def test_open_can_be_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text((json.dumps(GOOD) + "\n") * 2000)
    with pytest.raises(JobCancelled):
        open_dataset(path, should_stop=lambda: True)


def test_random_access_is_fast(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    row = {"instruction": "Explain " * 50, "input": "", "output": "Because " * 200}
    path.write_text((json.dumps(row) + "\n") * 20_000)
    ds = open_dataset(path)
    started = time.perf_counter()
    for i in range(0, 20_000, 100):
        assert ds.checked(i).conversation is not None
    per_record = (time.perf_counter() - started) / 200
    assert per_record < 0.005


@pytest.mark.slow
def test_million_rows_memory(tmp_path: Path) -> None:
    """1,000,000 JSONL rows: memory is offsets, not rows (run in a fresh interpreter)."""
    path = tmp_path / "big.jsonl"
    line = (json.dumps(GOOD) + "\n").encode()
    with path.open("wb") as f:
        for _ in range(100):
            f.write(line * 10_000)
    script = textwrap.dedent(
        f"""
        import resource, sys
        import pipeline.data.schemas
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        from pipeline.data.browse import open_dataset
        ds = open_dataset({str(path)!r})
        assert len(ds) == 1_000_000 and not ds.error_indices
        assert ds.checked(999_999).ref.line == 1_000_000
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    grown_mb = int(out.stdout.strip())
    assert grown_mb < 120, grown_mb  # 24 MB of offsets plus one chunk in flight
