"""pipeline.export: options, estimates, sources, bundle checks, verification maths, and the
whole chain (train -> merge -> litert-torch -> .task / .litertlm -> verify) on the tiny model
in the export environment (scripts/make_export_env.sh; CI makes it)."""

from __future__ import annotations

import json
import os
import signal
import stat
import zipfile
from pathlib import Path

import pytest

from pipeline.data import formatter
from pipeline.errors import ExportError, JobCancelled
from pipeline.events import StageDone, StageStarted
from pipeline.export import bundle as bundles
from pipeline.export.job import (
    QUANTS,
    TEMPLATE,
    ExportOptions,
    check_memory,
    check_options,
    estimate_export,
    export_run,
    list_exports,
    planned_stages,
    read_manifest,
    resolve_source,
)
from pipeline.export.verify import (
    Reference,
    compare,
    compare_text,
    engine_report,
    forced_agreement,
    interpreter_report,
)
from pipeline.models.config import ARCH_1B, ARCH_270M
from pipeline.workspace import Workspace

# --------------------------------------------------------------------------- options


def test_template_is_the_trainers():
    assert TEMPLATE["user_prefix"] == formatter.USER_HEADER
    assert TEMPLATE["model_prefix"] == formatter.MODEL_HEADER
    assert TEMPLATE["user_suffix"] == TEMPLATE["model_suffix"] == formatter.TURN_END


def test_check_options_names_every_problem():
    with pytest.raises(ExportError) as info:
        check_options(
            ExportOptions(
                quant="int8",
                formats=("task", "gguf"),
                kv_len=64,
                prefill_lens=(128,),
                min_agreement=1.5,
            )
        )
    msg = info.value.message
    assert "unsupported quantization 'int8'" in msg and "Did you mean 'dynamic_int8'" in msg
    for q in QUANTS:
        assert q in msg
    assert "unknown format 'gguf'" in msg
    assert "prefill length 128 exceeds the KV-cache length 64" in msg
    assert "between 0 and 1" in msg
    ok = check_options(ExportOptions(formats=(".TASK", "litertlm", "task"), prefill_lens=(64, 8)))
    assert ok.formats == ("task", "litertlm") and ok.prefill_lens == (8, 64)
    assert ok.threshold == 0.90


def test_estimates_match_measured_conversions():
    # Measured (research/export_tflite_mediapipe.md, bench/results/export.md): 1B int8
    # 1020 MB and int4 block32 566 MB at ~20.1 GiB peak; 270M int8 279 MB at 6.5 GiB.
    one_b = estimate_export(ARCH_1B, "dynamic_int8")
    assert 0.95e9 < one_b.file_bytes < 1.05e9
    assert 19 * 2**30 < one_b.peak_ram_bytes < 21.5 * 2**30
    assert 540e6 < estimate_export(ARCH_1B, "dynamic_int4_block32").file_bytes < 590e6
    small = estimate_export(ARCH_270M, "dynamic_int8")
    assert 255e6 < small.file_bytes < 290e6
    assert 5.5 * 2**30 < small.peak_ram_bytes < 7.5 * 2**30
    assert estimate_export(ARCH_270M, "none").file_bytes == 4 * small.weights
    # fp16 peaked 19% higher (7.71 GiB for the 270M): the 1B at fp16 does not fit 24 GiB
    assert 7.5 * 2**30 < estimate_export(ARCH_270M, "fp16").peak_ram_bytes < 8.5 * 2**30
    assert estimate_export(ARCH_1B, "fp16").peak_ram_bytes > 24 * 2**30


def test_check_memory_says_what_is_needed():
    est = estimate_export(ARCH_1B, "dynamic_int8")
    check_memory(est, available=est.peak_ram_bytes + 1)
    with pytest.raises(ExportError, match=r"needs about 20\.\d GiB.*only 8\.0 GiB") as info:
        check_memory(est, available=8 * 2**30)
    assert "--no-memory-check" in (info.value.hint or "")


# --------------------------------------------------------------------------- .task checks


def _task_zip(path: Path, members: dict[str, bytes], *, link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return path


GOOD = {
    bundles.TASK_TFLITE: b"\x1c\x00\x00\x00TFL3" + b"\x00" * 32,
    bundles.TASK_TOKENIZER: b"spm",
    bundles.TASK_METADATA: b"\n\x05<bos>\x12\x05<eos>\x12\r<end_of_turn>",
}


def test_task_check_and_extract(tmp_path: Path):
    task = _task_zip(tmp_path / "ok.task", GOOD)
    info = bundles.check_task(task)
    assert info.stop_tokens == ("<eos>", "<end_of_turn>") and info.start_token == "<bos>"
    out = bundles.extract_task(task, tmp_path / "unpacked")
    assert sorted(p.name for p in out) == sorted(GOOD)
    assert (tmp_path / "unpacked" / bundles.TASK_TOKENIZER).read_bytes() == b"spm"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../evil.txt", "'..' component"),
        ("sub/../../evil.txt", "'..' component"),
        ("/tmp/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
    ],
)
def test_task_zip_slip_is_refused_and_nothing_is_written(tmp_path: Path, name: str, why: str):
    task = _task_zip(tmp_path / "bad.task", {**GOOD, name: b"pwned"})
    dest = tmp_path / "export" / "unpacked"
    with pytest.raises(ExportError, match="zip-slip") as info:
        bundles.extract_task(task, dest)
    assert why in info.value.message and str(task) in info.value.message
    assert not dest.exists()
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    assert not Path("/tmp/evil.txt").exists()


def test_task_other_bad_members(tmp_path: Path):
    link = _task_zip(tmp_path / "link.task", GOOD, link="TOKENIZER_LINK")
    with pytest.raises(ExportError, match="symbolic link"):
        bundles.check_task(link)
    missing = _task_zip(tmp_path / "missing.task", {bundles.TASK_TFLITE: GOOD[bundles.TASK_TFLITE]})
    with pytest.raises(ExportError, match="lacks TOKENIZER_MODEL"):
        bundles.check_task(missing)
    not_tflite = _task_zip(tmp_path / "nt.task", {**GOOD, bundles.TASK_TFLITE: b"hello world!"})
    with pytest.raises(ExportError, match="not a TFLite flatbuffer"):
        bundles.check_task(not_tflite)
    garbage = tmp_path / "garbage.task"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ExportError, match="not a zip file"):
        bundles.check_task(garbage)
    lm = tmp_path / "x.litertlm"
    lm.write_bytes(b"PK\x03\x04 something else")
    with pytest.raises(ExportError, match=r"not a \.litertlm file"):
        bundles.check_litertlm(lm)


# --------------------------------------------------------------------------- verify maths


def _ref(ids, stopped=None):
    return Reference("p", (2, 3), tuple(ids), stopped)


def test_compare_agreement_divergence_and_stop():
    same = compare(_ref([5, 6, 7], 106), [5, 6, 7], True, max_new_tokens=8)
    assert same.agreement == 1.0 and same.first_divergence is None and same.stop_test == "pass"
    ran_on = compare(_ref([5, 6, 7], 106), [5, 6, 7, 8, 9], False, max_new_tokens=8)
    assert ran_on.stop_test == "fail" and ran_on.first_divergence == 3
    assert ran_on.agreement == pytest.approx(3 / 5)
    diverged = compare(_ref([5, 6, 7, 8], 106), [5, 9, 7, 8], True, max_new_tokens=8)
    assert diverged.first_divergence == 1 and diverged.agreement == 0.75
    assert diverged.stop_test == "n/a"
    no_stop = compare(_ref([5, 6]), [5, 6], False, max_new_tokens=2)
    assert no_stop.stop_test == "n/a" and no_stop.agreement == 1.0


def test_compare_text_ignores_silent_tokens_but_not_words():
    pieces = {5: "Hello", 6: " world", 7: "", 8: "!"}

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    def encode(text):
        out, rest = [], text
        while rest:
            for i, p in pieces.items():
                if p and rest.startswith(p):
                    out.append(i)
                    rest = rest[len(p) :]
                    break
            else:
                raise AssertionError(rest)
        return out

    silent = compare_text(_ref([5, 6, 7]), "Hello world", encode=encode, decode=decode)
    assert silent.agreement == 1.0 and silent.first_divergence is None
    stopped = compare_text(_ref([5, 6], 106), "Hello world", encode=encode, decode=decode)
    assert stopped.stop_test == "pass"
    ran_on = compare_text(_ref([5, 6], 106), "Hello world!", encode=encode, decode=decode)
    assert ran_on.stop_test == "fail"
    wrong = compare_text(_ref([5, 6, 8]), "Hello!", encode=encode, decode=decode)
    assert wrong.first_divergence == 1 and wrong.agreement == pytest.approx(1 / 3)
    interp = interpreter_report(
        "task",
        [_ref([5, 6], 106), _ref([5, 6, 8])],
        [
            {"ids": [5, 6], "stopped": 106, "forced": [5, 6, 106]},
            {"ids": [5, 6, 8], "stopped": None, "forced": [5, 9, 8, 1]},
        ],
        threshold=0.7,
        max_new_tokens=8,
        decode=decode,
    )
    assert interp.gate == pytest.approx(5 / 6) and interp.stop_pass == 1 and interp.passed
    # the engine ran on past the interpreter's stop: the bundle's stop tokens are wrong
    engine = engine_report(
        "task",
        [_ref([5, 6], 106), _ref([5, 6, 8])],
        [{"text": "Hello world!"}, {"text": "Hello world!"}],
        interp,
        threshold=0.5,
        encode=encode,
        decode=decode,
    )
    assert engine.stop_fail == 1 and not engine.passed
    same = engine_report(
        "task",
        [_ref([5, 6], 106), _ref([5, 6, 8])],
        [{"text": "Hello world"}, {"text": "Hello world!"}],
        interp,
        threshold=1.0,
        encode=encode,
        decode=decode,
    )
    assert same.gate == 1.0 and same.stop_pass == 1 and same.passed


def test_forced_agreement_counts_the_stop_token():
    assert forced_agreement(_ref([5, 6], 106), [5, 6, 106]) == 1.0
    assert forced_agreement(_ref([5, 6], 106), [5, 6, 7]) == pytest.approx(2 / 3)
    assert forced_agreement(_ref([5, 6]), [5, 7, 9]) == 0.5


# --------------------------------------------------------------------------- sources


@pytest.fixture(scope="module")
def tiny_run(yes_run: tuple[Workspace, Path]) -> tuple[Workspace, Path]:
    """The tiny model taught to answer "Yes." and stop (tests/tiny_run.py: ``train_yes_run``)."""
    return yes_run


def test_resolve_source_picks_and_refuses(tiny_run, tmp_path: Path):
    ws, run_dir = tiny_run
    src = resolve_source("tiny-run", workspace=ws)
    assert src.final and src.step == 60 and src.model_source == "tiny"
    assert resolve_source(run_dir, 30, ws).checkpoint.name == "step-000030"
    assert resolve_source(run_dir, "step-000030", ws).step == 30
    with pytest.raises(ExportError, match=r"has no checkpoint 7 \(it has: .*step-000030"):
        resolve_source(run_dir, 7, ws)
    with pytest.raises(ExportError, match="not a step number"):
        resolve_source(run_dir, "latest", ws)

    # a checkpoint without its adapter
    import shutil

    broken_run = tmp_path / "broken"
    shutil.copytree(run_dir, broken_run)
    (broken_run / "final" / "adapter.npz").unlink()
    with pytest.raises(ExportError, match=r"final has no LoRA adapter \(adapter.npz is missing\)"):
        resolve_source(broken_run, "final", ws)

    # a corrupt safetensors (the PEFT copy of the adapter), cut short
    peft = broken_run / "checkpoints" / "step-000030" / "adapter_model.safetensors"
    peft.write_bytes(peft.read_bytes()[:-10])
    with pytest.raises(ExportError, match=r"damaged.*not a valid safetensors file"):
        resolve_source(broken_run, 30, ws)

    # a run that never saved a checkpoint
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(ExportError, match="no checkpoint with a LoRA adapter"):
        resolve_source(empty, None, ws)


def test_bad_inputs_write_nothing_in_the_workspace(tiny_run, tmp_path: Path):
    ws, run_dir = tiny_run
    before = sorted(p for p in ws.root.rglob("*"))
    with pytest.raises(ExportError, match="unsupported quantization 'q4'"):
        export_run(run_dir, options=ExportOptions(quant="q4"), workspace=ws)
    with pytest.raises(ExportError, match="no checkpoint 99"):
        export_run(run_dir, checkpoint=99, workspace=ws)
    assert sorted(p for p in ws.root.rglob("*")) == before


# --------------------------------------------------------------------------- the chain


TINY = {"prefill_lens": (32,), "kv_len": 128, "max_new_tokens": 12}


@pytest.mark.parametrize("quant", ["none", "fp16"])
def test_tiny_chain_exports_and_agrees_exactly(export_env, tiny_run, quant: str):
    ws, run_dir = tiny_run
    events: list[object] = []
    options = ExportOptions(quant=quant, force=True, **TINY)  # type: ignore[arg-type]
    result = export_run(run_dir, options=options, workspace=ws, on_event=events.append)
    out = result.out_dir
    assert out == ws.exports_dir / f"tiny-run-final-{'f32' if quant == 'none' else 'fp16'}"
    assert result.status == "ok", result.report and result.report.summary()
    assert result.report is not None and result.report.passed
    got = {(r.bundle, r.runtime): (r.agreement, r.gate) for r in result.report.runtimes}
    assert got == {
        ("task", "interpreter"): (1.0, 1.0),
        ("task", "litert_lm"): (1.0, 1.0),
        ("litertlm", "litert_lm"): (1.0, 1.0),
    }
    for r in result.report.runtimes:
        # every reply is "Yes." and ends by itself at <end_of_turn>, in every runtime
        assert r.stop_pass == len(r.prompts) == 4 and r.stop_fail == 0
        assert all(p.expected_text == p.got_text == "Yes." for p in r.prompts)
        assert all(p.first_divergence is None for p in r.prompts)
        assert r.runtime != "interpreter" or all(p.forced_agreement == 1.0 for p in r.prompts)
    # the stages ran in order and each one said so
    started = [e.stage for e in events if isinstance(e, StageStarted)]
    assert started == planned_stages(check_options(options))
    done = {e.stage for e in events if isinstance(e, StageDone)}
    assert set(started) <= done
    assert isinstance(events[-1], StageDone) and events[-1].stage == "export"

    # the folder: bundles, manifest with true hashes, report; nothing temporary left
    names = sorted(p.name for p in out.iterdir())
    stem = out.name
    assert names == sorted(
        [
            f"{stem}.task",
            f"{stem}.litertlm",
            "manifest.json",
            "verify.json",
            "verify.md",
            "export.log",
        ]
    )
    info = bundles.check_task(out / f"{stem}.task")
    assert info.stop_tokens == ("<eos>", "<end_of_turn>") and info.start_token == "<bos>"
    manifest = read_manifest(out)
    assert manifest["status"] == "ok" and manifest["quantization"] == quant
    assert manifest["source"]["step"] == 60 and manifest["source"]["checkpoint"] == "final"
    assert manifest["merge"]["kernels_changed"] == manifest["merge"]["kernels_targeted"] == 42
    assert manifest["merge"]["max_abs_logit_diff_vs_lora"] < 1e-4
    assert manifest["tools"]["litert-torch"] == "0.10.0"
    import hashlib

    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert len(data) == entry["bytes"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert "PASSED" in (out / "verify.md").read_text()
    assert json.loads((out / "verify.json").read_text())["passed"] is True
    assert not [p for p in ws.exports_dir.iterdir() if p.name.startswith(".tmp-")]
    assert (out, manifest) in list_exports(ws)


def test_existing_export_is_not_replaced_without_force(export_env, tiny_run):
    ws, run_dir = tiny_run
    target = ws.exports_dir / "tiny-run-final-q8"
    target.mkdir(parents=True, exist_ok=True)
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists") as info:
        export_run(run_dir, options=ExportOptions(**TINY), workspace=ws)  # type: ignore[arg-type]
    assert "--force" in (info.value.hint or "")
    assert (target / "keep.txt").read_text() == "mine"


def _worker_pids() -> list[int]:
    me = os.getpid()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        ppid = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("PPid")), 0)
        if b"pipeline.export.worker" in cmd and ppid == me:
            pids.append(int(proc.name))
    return pids


def test_killed_converter_fails_cleanly(export_env, tiny_run):
    """The converter dies (as under the OOM killer): a clear error, nothing under the final
    name, no temporary folder left, the log kept."""
    ws, run_dir = tiny_run

    def kill_on_convert(event: object) -> None:
        if isinstance(event, StageStarted) and event.stage == "convert":
            for pid in _worker_pids():
                os.kill(pid, signal.SIGKILL)

    options = ExportOptions(quant="weight_only_int8", **TINY)  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="killed by SIGKILL during convert") as info:
        export_run(run_dir, checkpoint=30, options=options, workspace=ws, on_event=kill_on_convert)
    assert "RAM" in (info.value.hint or "")
    final = ws.exports_dir / "tiny-run-step30-q8wo"
    assert not final.exists()
    assert not [p for p in ws.exports_dir.iterdir() if p.name.startswith(".tmp-")]
    assert (ws.exports_dir / "tiny-run-step30-q8wo.failed.log").is_file()


def test_cancel_during_conversion_leaves_nothing(export_env, tiny_run):
    ws, run_dir = tiny_run
    seen: list[str] = []

    def on_event(event: object) -> None:
        if isinstance(event, StageStarted):
            seen.append(event.stage)

    options = ExportOptions(quant="weight_only_int8", **TINY)  # type: ignore[arg-type]
    with pytest.raises(JobCancelled):
        export_run(
            run_dir,
            checkpoint=30,
            options=options,
            workspace=ws,
            on_event=on_event,
            should_stop=lambda: "convert" in seen,
        )
    assert not (ws.exports_dir / "tiny-run-step30-q8wo").exists()
    assert not [p for p in ws.exports_dir.iterdir() if p.name.startswith(".tmp-")]
    assert _worker_pids() == []
