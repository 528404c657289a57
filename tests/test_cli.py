"""The `gemma-tui` command line: exit codes, help, and each data command on real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_tui.cli import EXIT_INVALID, EXIT_OK, EXIT_USAGE, build_parser, main

SAMPLES = Path(__file__).resolve().parent.parent / "pipeline" / "data" / "samples"


def _all_commands() -> list[list[str]]:
    """Every command path of the parser, e.g. ['data', 'convert']."""
    import argparse

    paths: list[list[str]] = [[]]

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return paths


@pytest.mark.parametrize("command", _all_commands(), ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: gemma-tui" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["data", "frobnicate", "x.jsonl"])
    assert exc.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as exc:
        main(["data", "validate", str(SAMPLES), "--role", "bot=robot"])
    assert exc.value.code == EXIT_USAGE
    assert "unknown canonical role 'robot'" in capsys.readouterr().err


def test_missing_file_is_an_environment_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "validate", str(tmp_path / "nope.jsonl")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Dataset problem" in err
    assert "nope.jsonl" in err


def test_validate_reports_each_problem_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["data", "validate", str(SAMPLES / "sample_sharegpt.jsonl")])
    out = capsys.readouterr().out
    assert status == EXIT_INVALID
    assert "sample_sharegpt.jsonl:4: invalid JSON" in out
    assert "sample_sharegpt.jsonl:8 [conversations[1].from]: unknown role 'bot'" in out
    assert "19 rows: 15 valid, 4 invalid" in out


def test_validate_clean_file_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = tmp_path / "clean.jsonl"
    assert main(["data", "convert", str(SAMPLES / "sample_chatml.jsonl"), "-o", str(clean)]) == 1
    capsys.readouterr()
    assert main(["data", "validate", str(clean), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == report["valid"] == 10
    assert report["formats"] == {str(clean): "sharegpt"}


def test_convert_writes_rows_and_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    status = main(["data", "convert", str(SAMPLES), "-o", str(out), "--to", "chatml"])
    assert status == EXIT_INVALID  # invalid rows were found (and set aside)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    rejects = [
        json.loads(line)
        for line in (tmp_path / "out.rejects.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(rows) == 65
    assert len(rejects) == 13
    assert all("messages" in row for row in rows)
    assert all(r["issues"] and r["issues"][0]["reason"] for r in rejects)
    assert "wrote 65 rows" in capsys.readouterr().out


def test_convert_never_overwrites_its_input(tmp_path: Path) -> None:
    source = tmp_path / "data.jsonl"
    shutil.copy(SAMPLES / "sample_sharegpt.jsonl", source)
    before = source.read_bytes()
    assert main(["data", "convert", str(source), "-o", str(source)]) == EXIT_USAGE
    assert source.read_bytes() == before


def test_column_and_role_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "custom.jsonl"
    source.write_text(
        json.dumps({"dialog": [{"who": "asker", "text": "Hi?"}, {"who": "bot", "text": "Hi!"}]})
        + "\n",
        encoding="utf-8",
    )
    args = ["data", "validate", str(source), "--format", "sharegpt", "--column", "messages=dialog"]
    args += ["--column", "role=who", "--column", "content=text"]
    args += ["--role", "asker=user", "--role", "bot=model"]
    assert main(args) == EXIT_OK
    assert "1 rows: 1 valid, 0 invalid" in capsys.readouterr().out


def test_dedup_split_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = tmp_path / "clean.jsonl"
    main(["data", "convert", str(SAMPLES), "-o", str(clean)])
    dedup = tmp_path / "dedup.jsonl"
    assert main(["data", "dedup", str(clean), "-o", str(dedup)]) == EXIT_OK
    kept = dedup.read_text(encoding="utf-8").splitlines()
    # The samples repeat the same questions across formats: 29 exact duplicates.
    assert len(kept) == 36
    assert (tmp_path / "dedup.removed.jsonl").is_file()
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    args = ["data", "split", str(dedup), "--train", str(train), "--eval", str(held)]
    assert main([*args, "--eval-fraction", "0.25", "--seed", "3"]) == EXIT_OK
    n_train = len(train.read_text(encoding="utf-8").splitlines())
    n_eval = len(held.read_text(encoding="utf-8").splitlines())
    assert (n_train, n_eval) == (27, 9)
    capsys.readouterr()
    assert main(["data", "stats", str(dedup), "--max-seq-len", "64", "--json"]) == EXIT_OK
    stats = json.loads(capsys.readouterr().out)
    assert stats["examples"] == 36
    assert 0 < stats["trained_share"] < 1
    assert stats["truncated"] >= 1


def test_profile_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "list"]) == EXIT_OK
    assert "rtx3060-12gb" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\ndtype = "float16"\n[train]\nmax_steps = 10\n', encoding="utf-8")
    assert main(["profile", "validate", str(bad)]) == EXIT_INVALID
    assert "float16" in capsys.readouterr().err


def test_entry_point_runs_as_a_program(tmp_path: Path) -> None:
    """The installed console script, as a user runs it."""
    exe = Path(sys.executable).with_name("gemma-tui")
    proc = subprocess.run(
        [str(exe), "data", "validate", str(SAMPLES / "sample_alpaca.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_INVALID, proc.stderr
    assert "sample_alpaca.csv:22 [output]" in proc.stdout


def test_convert_and_split_to_hf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--to hf`: a saved Hugging Face Dataset (convert) and one DatasetDict (split)."""
    from pipeline.data.readers.hf_dataset import import_datasets

    datasets = import_datasets()
    hf_out = tmp_path / "clean_hf"
    args = ["data", "convert", str(SAMPLES / "sample_sharegpt.jsonl"), "--to", "hf"]
    assert main([*args, "-o", str(hf_out)]) == EXIT_INVALID  # broken rows set aside
    assert "wrote 15 rows" in capsys.readouterr().out
    assert (tmp_path / "clean_hf.rejects.jsonl").is_file()
    assert datasets.load_from_disk(str(hf_out)).num_rows == 15

    split = tmp_path / "split_hf"
    args = ["data", "split", str(hf_out), "--to", "hf", "--train", str(split)]
    assert main([*args, "--eval-fraction", "0.2", "--seed", "1"]) == EXIT_OK
    saved = datasets.load_from_disk(str(split))
    assert {name: saved[name].num_rows for name in saved} == {"train": 12, "eval": 3}
    assert main(["data", "validate", str(split)]) == EXIT_OK
    assert "split_hf[train]: sharegpt, split_hf[eval]: sharegpt" in capsys.readouterr().out

    # One folder holds both splits: --eval is a usage error with hf, required without it.
    with pytest.raises(SystemExit) as exc:
        main([*args, "--eval", str(tmp_path / "e.jsonl")])
    assert exc.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as exc:
        main(["data", "split", str(hf_out), "--train", str(tmp_path / "t.jsonl")])
    assert exc.value.code == EXIT_USAGE
    assert "--eval is required" in capsys.readouterr().err
    # Writing the dataset over its own input folder is refused.
    assert main(["data", "convert", str(split), "--to", "hf", "-o", str(split)]) == EXIT_USAGE
    with pytest.raises(SystemExit):
        main(["data", "convert", "--help"])
    assert "--to {sharegpt,chatml,hf}" in capsys.readouterr().out


def test_outputs_default_to_the_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without -o the CLI writes where the TUI would: <workspace>/datasets/<name>.<job>..."""
    monkeypatch.setenv("GEMMA_TUI_WORKSPACE", str(tmp_path))
    assert main(["data", "convert", str(SAMPLES / "sample_chatml.jsonl")]) == EXIT_INVALID
    datasets = tmp_path / "datasets"
    converted = datasets / "sample_chatml.converted.jsonl"
    assert len(converted.read_text(encoding="utf-8").splitlines()) == 10
    assert (datasets / "sample_chatml.converted.rejects.jsonl").is_file()
    assert main(["data", "dedup", str(converted)]) == EXIT_OK
    assert main(["data", "split", str(converted), "--eval-fraction", "0.2"]) == EXIT_OK
    assert sorted(p.name for p in datasets.iterdir()) == [
        "sample_chatml.converted.dedup.jsonl",
        "sample_chatml.converted.dedup.removed.jsonl",
        "sample_chatml.converted.eval.jsonl",
        "sample_chatml.converted.jsonl",
        "sample_chatml.converted.rejects.jsonl",
        "sample_chatml.converted.train.jsonl",
    ]
