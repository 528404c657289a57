"""Training on several devices gives the results of one device (issue 7).

JAX fixes its devices when it starts, so each case runs tests/pipeline/multidevice_worker.py
in a fresh process: two CPU devices through
``XLA_FLAGS=--xla_force_host_platform_device_count=2``, or two processes of one CPU device
each joined through Keras' multi-process variables (a two-"host" run on this machine). The
tiny model trains 4 optimizer steps of a global batch of 4 rows x 2 micro-batches.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).with_name("multidevice_worker.py")
REPO = WORKER.parents[2]
TOL = 2e-5
"""Losses agree to float32 rounding (the gradient sums run in another order)."""
WEIGHT_TOL = 1e-3
"""LoRA weights after 4 AdamW steps, relative to their largest value. The A matrices' first
gradients are tiny (B starts at zero) and Adam divides them by the root of even tinier second
moments, which magnifies rounding: 2.5e-4 measured with model parallel, whose vocabulary-split
loss sums in another order. A real split error (half a batch's gradient) moves weights by about
the learning rate, 5e-2, of values near 0.2."""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_DISTRIBUTION_")}
    env.pop("XLA_FLAGS", None)
    env |= {"JAX_PLATFORMS": "cpu", "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO), **extra}
    return env


def _run(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args], env=env, stdout=log.open("wb"),
        stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip


def _wait(proc: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    tail = log.read_text(errors="replace")[-4000:]
    assert rc == 0, f"worker failed ({rc}):\n{tail}"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("multi-device")
    out, log = root / "suite.json", root / "suite.log"
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    _wait(_run(["suite", str(out), str(root / "runs")], env, log), log)
    return json.loads(out.read_text())


def _close(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for step in a:
        assert abs(a[step] - b[step]) < TOL * max(1.0, abs(a[step])), (step, a[step], b[step])


def _same_weights(a: dict[str, list[float]], b: dict[str, list[float]]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        diff = max(abs(x - y) for x, y in zip(a[key], b[key], strict=True))
        scale = max(abs(x) for x in a[key]) or 1.0
        assert diff <= WEIGHT_TOL * scale, (key, diff, scale)


def test_the_placements_split_the_rows_and_the_large_weights(suite: dict[str, Any]) -> None:
    lay = suite["layouts"]
    assert lay["visible"] == ["cpu:0", "cpu:1"]
    data = lay["data"]
    assert data["batch_shards"] == [[2, 2, 8], [2, 2, 8]]  # [A, B, S]: each device 2 rows of 4
    assert data["embed_shards"] == [[64, 8], [64, 8]]  # data parallel: the model replicated
    assert "data parallel over 2 CPU devices" in data["describe"]
    model = lay["model"]
    assert model["batch_shards"] == [[2, 4, 8], [2, 4, 8]]  # one replica: every row on both
    assert model["embed_shards"] == [[32, 8], [32, 8]]  # the vocabulary split in two
    assert model["q_shards"] == [[1, 8, 4], [1, 8, 4]]  # two query heads: one each
    assert model["k_shards"] == [[1, 8, 4], [1, 8, 4]]  # one key head: kept whole on both


def test_two_devices_train_like_one_with_the_same_global_batch(suite: dict[str, Any]) -> None:
    one, two = suite["one"], suite["two"]
    assert one["devices"] == ["cpu:0"] and two["devices"] == ["cpu:0", "cpu:1"]
    assert two["memory_devices"] == ["cpu:0", "cpu:1"]  # a reading for every device
    assert len(one["losses"]) == 4 and one["status"] == two["status"] == "finished"
    assert one["losses"]["4"] < one["losses"]["1"]  # it trains: the comparison means something
    _close(one["losses"], two["losses"])
    _same_weights(one["adapter"], two["adapter"])


def test_model_parallel_trains_like_one_device(suite: dict[str, Any]) -> None:
    mp = suite["model_parallel"]
    assert "1 data-parallel x 2 model-parallel" in mp["placement"]
    _close(suite["one"]["losses"], mp["losses"])
    _same_weights(suite["one"]["adapter"], mp["adapter"])


def test_auto_uses_every_device_the_batch_splits_across(suite: dict[str, Any]) -> None:
    assert suite["auto"]["devices"] == ["cpu:0", "cpu:1"]
    odd = suite["auto_odd"]  # 3 rows do not split in two: one device, the other named idle
    assert odd["devices"] == ["cpu:0"]
    assert "left idle: cpu:1" in odd["placement"]


@pytest.mark.parametrize("case", ["two_then_one", "one_then_two"])
def test_a_checkpoint_resumes_on_another_device_count(suite: dict[str, Any], case: str) -> None:
    first, rest = suite[case]["first"], suite[case]["rest"]
    assert first["status"] == "stopped" and first["step"] == 2
    assert rest["status"] == "finished" and rest["run_dir"] == first["run_dir"]
    assert len(rest["devices"]) == (1 if case == "two_then_one" else 2)
    assert sorted(rest["losses"]) == ["3", "4"]
    _close(first["losses"] | rest["losses"], suite["one"]["losses"])
    _same_weights(rest["adapter"], suite["one"]["adapter"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_train_like_one_device(tmp_path: Path, suite: dict[str, Any]) -> None:
    """Two "hosts" (processes with one CPU device each) joined by
    KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID: the same losses and
    weights as one device, each process with its own copy of the run."""
    port = _free_port()
    procs = []
    for index in (0, 1):
        env = _env(
            KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
            KERAS_DISTRIBUTION_NUM_PROCESSES="2",
            KERAS_DISTRIBUTION_PROCESS_ID=str(index),
        )
        args = ["host", str(tmp_path / f"p{index}.json"), str(tmp_path / f"host{index}")]
        procs.append((_run(args, env, tmp_path / f"p{index}.log"), tmp_path / f"p{index}.log"))
    for proc, log in procs:
        _wait(proc, log, timeout=300)
    results = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in (0, 1)]
    assert Path(results[0]["run_dir"]).name == "hosts"
    assert Path(results[1]["run_dir"]).name == "hosts-p1"  # process 1 keeps its own copy
    for index, result in enumerate(results):
        assert len(result["devices"]) == 2  # both processes' devices in one mesh
        assert f"2 processes, this is process {index}" in result["placement"]
        assert len(result["memory_devices"]) == 1  # each reads its own device
        _close(result["losses"], suite["one"]["losses"])
        _same_weights(result["adapter"], suite["one"]["adapter"])


# --------------------------------------------------------------------------- no JAX needed


def test_device_count_rules_name_the_setting_and_the_fix() -> None:
    from pipeline.errors import TrainingError
    from pipeline.training.distribute import resolve_device_count

    assert resolve_device_count("auto", 1, 8, 2) == 2
    assert resolve_device_count("auto", 1, 3, 2) == 1  # 3 rows: the most devices that split
    assert resolve_device_count("auto", 2, 4, 4) == 4  # 2 replicas x 2
    assert resolve_device_count("1", 1, 3, 8) == 1
    with pytest.raises(TrainingError, match=r"train.devices = 4, but only 2 devices") as info:
        resolve_device_count("4", 1, 8, 2)
    assert "CUDA_VISIBLE_DEVICES" in (info.value.hint or "")
    with pytest.raises(TrainingError, match=r"batch_size = 3 does not split across 2"):
        resolve_device_count("2", 1, 3, 2)
    with pytest.raises(TrainingError, match=r"model_parallel = 4 needs 4 devices"):
        resolve_device_count("auto", 4, 8, 2)
    with pytest.raises(TrainingError, match="every device takes part"):
        resolve_device_count("1", 1, 4, 2, processes=2)


def test_a_profile_refuses_a_device_count_that_cannot_work() -> None:
    from pipeline.profiles.io import loads_profile
    from pipeline.profiles.problems import ProfileValidationError

    base = 'name = "p"\n[train]\nmax_steps = 1\nbatch_size = 4\n'
    assert loads_profile(base + "devices = 2\n").train.devices == "2"  # a number is taken
    assert loads_profile(base).train.devices == "auto"
    for line, words in (
        ('devices = "all"', "not a device count"),
        ("devices = 3\nmodel_parallel = 2", "not a multiple of train.model_parallel"),
        ("devices = 8", "does not split across 8 data-parallel devices"),
    ):
        with pytest.raises(ProfileValidationError, match=words):
            loads_profile(base + line + "\n")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "two"}, "is not a whole number"),
        ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}, "expected a process number from 0 to 1"),
        (
            {"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "0"},
            "KERAS_DISTRIBUTION_JOB_ADDRESSES is not set",
        ),
    ],
)
def test_bad_multi_host_variables_are_named_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], words: str
) -> None:
    from pipeline.errors import TrainingError
    from pipeline.training.distribute import initialize_multihost

    for key in list(os.environ):
        if key.startswith("KERAS_DISTRIBUTION_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(TrainingError, match=words) as info:
        initialize_multihost()
    assert "KERAS_DISTRIBUTION_PROCESS_ID=0..N-1" in (info.value.hint or "")
