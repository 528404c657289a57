"""Checkpoints: round trip, atomic layout, damaged and leftover folders, and a real full disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ModelSourceError, TrainingError
from pipeline.events import LogLine
from pipeline.models.config import ARCH_TINY
from pipeline.models.lora import AdapterMeta, init_adapter
from pipeline.profiles import load_profile
from pipeline.training.checkpoint import (
    Checkpoint,
    flatten_arrays,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    unflatten_arrays,
)
from tests.conftest import REPO

META = AdapterMeta(rank=2, alpha=4.0, targets=("q", "v"), arch=ARCH_TINY)


def _opt_state(adapter: dict, count: int = 3) -> dict:
    import ml_dtypes

    mu = {
        "layers": [
            {t: {k: v + 1 for k, v in ab.items()} for t, ab in b.items()} for b in adapter["layers"]
        ]
    }
    return {
        "mu": mu,
        "nu": adapter,
        "count": np.int32(count),
        "ema": np.ones(3, dtype=ml_dtypes.bfloat16),
    }


def _save(run: Path, step: int, *, final: bool = False, seed: int = 0) -> Path:
    adapter = init_adapter(META, seed)
    return save_checkpoint(
        run,
        step,
        adapter=adapter,
        meta=META,
        opt_state=_opt_state(adapter, step),
        state={"data": {"epoch": 0, "position": step * 2}, "seed": [1, 2], "loss": np.float32(2.5)},
        profile=load_profile("cpu-smoke"),
        final=final,
    )


def _tree_equal(a: object, b: object) -> bool:
    fa, fb = flatten_arrays(a), flatten_arrays(b)
    return fa.keys() == fb.keys() and all(
        fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]) for k in fa
    )


def test_round_trip(tmp_path: Path) -> None:
    path = _save(tmp_path, 200)
    assert path == tmp_path / "checkpoints" / "step-000200"
    assert sorted(p.name for p in path.iterdir()) == [
        "adapter.npz",
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.npz",
        "profile.toml",
        "state.json",
    ]
    ckpt = load_checkpoint(path, expect=META)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.step == 200 and ckpt.meta == META
    assert _tree_equal(ckpt.adapter, init_adapter(META, 0))
    assert _tree_equal(unflatten_arrays(ckpt.opt_state), _opt_state(init_adapter(META, 0), 200))
    assert "mu/layers/5/v/b" in ckpt.opt_state  # the trainer's flat keys
    assert ckpt.opt_state["ema"].dtype.name == "bfloat16"
    assert ckpt.state["data"] == {"epoch": 0, "position": 400}
    assert ckpt.state["seed"] == [1, 2] and ckpt.state["loss"] == 2.5
    assert len(ckpt.state["profile_hash"]) == 64
    assert ckpt.profile == load_profile("cpu-smoke")
    peft = json.loads((path / "adapter_config.json").read_text())
    assert peft["r"] == 2 and peft["base_model_name_or_path"] == "embedded"
    # an already flattened state (what the trainer passes) is stored as it is
    flat = flatten_arrays(_opt_state(init_adapter(META, 0)))
    again = save_checkpoint(
        tmp_path, 201, adapter=init_adapter(META, 0), meta=META, opt_state=flat, state={},
        profile=None,
    )  # fmt: skip
    assert _tree_equal(load_checkpoint(again).opt_state, flat)


def test_final_replaces_the_old_one_and_leaves_no_temporary_folder(tmp_path: Path) -> None:
    _save(tmp_path, 4)
    first = _save(tmp_path, 8, final=True, seed=1)
    assert first == tmp_path / "final"
    second = _save(tmp_path, 10, final=True, seed=2)
    assert second == first
    ckpt = load_checkpoint(second)
    assert ckpt.step == 10 and _tree_equal(ckpt.adapter, init_adapter(META, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "final"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000004"]
    assert [(c.step, c.final) for c in list_checkpoints(tmp_path)] == [(4, False), (10, True)]
    assert latest_checkpoint(tmp_path) == second


def test_final_is_replaced_without_renameat2_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.training.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)  # not Linux
    _save(tmp_path, 8, final=True, seed=1)
    path = _save(tmp_path, 10, final=True, seed=2)
    assert load_checkpoint(path).step == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_latest_skips_leftovers_and_damaged_checkpoints(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    _save(tmp_path, 100)
    _save(tmp_path, 200)
    third = _save(tmp_path, 300)
    # an interrupted write: a temporary folder with half the files
    leftover = tmp_path / "checkpoints" / ".tmp-step-000400-0badc0de"
    shutil.copytree(third, leftover)
    (leftover / "state.json").unlink()
    # a checkpoint damaged after the fact
    (third / "optimizer.npz").write_bytes(b"not a zip")
    (tmp_path / "checkpoints" / "step-000200" / "state.json").write_text("{")
    events: list[object] = []
    assert latest_checkpoint(tmp_path, on_event=events.append) == (
        tmp_path / "checkpoints" / "step-000100"
    )
    warnings = [e.message for e in events if isinstance(e, LogLine) and e.level == "warning"]
    assert len(warnings) == 2
    assert "step-000300" in warnings[1] and "optimizer.npz is not an npz archive" in warnings[1]
    assert "step-000200" in warnings[0] and "unreadable state.json" in warnings[0]
    with pytest.raises(TrainingError) as exc:
        load_checkpoint(third)
    assert "step-000300 is damaged" in exc.value.message
    assert "step-000100" in (exc.value.hint or "")


def test_adapter_must_match_the_expected_one(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)
    other = AdapterMeta(rank=4, alpha=4.0, targets=("q", "v"), arch=ARCH_TINY)
    with pytest.raises(ModelSourceError, match="adapter rank 2, model expects 4"):
        load_checkpoint(path, expect=other)


def test_bad_state_leaves_nothing_behind(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    adapter = init_adapter(META, 0)
    with pytest.raises(TrainingError, match="not JSON-able"):
        save_checkpoint(
            tmp_path, 2, adapter=adapter, meta=META, opt_state={}, state={"x": object()},
            profile=None,
        )  # fmt: skip
    with pytest.raises(TrainingError, match="not a numeric array"):
        save_checkpoint(
            tmp_path, 2, adapter=adapter, meta=META, opt_state={"x": np.array([None])},
            state={}, profile=None,
        )  # fmt: skip
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000001"]


# --------------------------------------------------------------------------- a real full disk

SCENARIO = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from pipeline.errors import TrainingError
    from pipeline.models.config import ARCH_TINY
    from pipeline.models.lora import AdapterMeta, init_adapter
    from pipeline.training.checkpoint import (
        latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint,
    )

    run = Path(sys.argv[1]) / "run"
    meta = AdapterMeta(rank=2, alpha=4.0, targets=("q", "v"), arch=ARCH_TINY)
    adapter = init_adapter(meta, 0)

    def save(step, opt_bytes, final=False):
        opt = {"mu": np.ones(opt_bytes // 4, np.float32), "count": np.int32(step)}
        try:
            save_checkpoint(run, step, adapter=adapter, meta=meta, opt_state=opt,
                            state={"n": step}, profile=None, final=final)
        except TrainingError as exc:
            return str(exc)
        return None

    out = {"small": save(1, 64 * 1024), "small_final": save(1, 64 * 1024, final=True)}
    out["big"] = save(2, 4 * 1024 * 1024)
    out["big_final"] = save(2, 4 * 1024 * 1024, final=True)
    out["tree"] = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    out["latest"] = str(latest_checkpoint(run).relative_to(run))
    out["final_step"] = load_checkpoint(run / "final").step
    out["listing"] = [(c.path.name, c.step, c.ok) for c in list_checkpoints(run)]
    print(json.dumps(out))
    """
)


def _run_scenario(tmp_path: Path) -> tuple[str, dict]:
    """Run SCENARIO on a 2 MiB tmpfs in a private mount namespace (``unshare -rm``: the
    mount vanishes with the process), else under a 1 MiB RLIMIT_FSIZE; skip if neither."""
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    unshare = shutil.which("unshare")
    if unshare:
        probe = subprocess.run(
            [unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size=2m tmpfs '{disk}'"],
            capture_output=True,
        )
        if probe.returncode == 0:
            mount = 'mount -t tmpfs -o size=2m tmpfs "$1" && exec "$2" "$3" "$1"'
            cmd = [unshare, "-rm", "sh", "-c", mount, "sh", str(disk), sys.executable, str(script)]
            result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
            assert result.returncode == 0, result.stderr
            return "tmpfs", json.loads(result.stdout.strip().splitlines()[-1])
    try:
        import resource
    except ImportError:
        pytest.skip("no unshare with tmpfs mounts and no resource.setrlimit: cannot fill a disk")

    def limit() -> None:
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))

    result = subprocess.run(
        [sys.executable, str(script), str(disk)],
        capture_output=True, text=True, env=env, cwd=REPO, preexec_fn=limit,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return "rlimit", json.loads(result.stdout.strip().splitlines()[-1])


def test_full_disk_keeps_earlier_checkpoints(tmp_path: Path) -> None:
    how, out = _run_scenario(tmp_path)
    assert out["small"] is None and out["small_final"] is None
    for key, name in (("big", "checkpoints/step-000002"), ("big_final", "final")):
        message = out[key]
        assert message is not None, f"{key} did not fail on a full disk ({how})"
        if how == "tmpfs":
            assert message.startswith("The disk is full: cannot write")
            assert "It needs about 4.1 MiB" in message and "free on" in message
        else:
            assert "file-size limit" in message
        assert f"run/{name}" in message
        assert "Earlier checkpoints are kept" in message
    # no temporary folder is left and the earlier checkpoints are intact
    files = ["adapter.npz", "adapter_config.json", "adapter_model.safetensors"]
    files += ["optimizer.npz", "state.json"]
    step1 = "checkpoints/step-000001"
    expected = ["checkpoints", step1, *(f"{step1}/{f}" for f in files)]
    expected += ["final", *(f"final/{f}" for f in files)]
    assert out["tree"] == sorted(expected)
    assert not any(".tmp-" in p or ".old-" in p for p in out["tree"])
    assert out["latest"] == "final" and out["final_step"] == 1
    assert out["listing"] == [["step-000001", 1, True], ["final", 1, True]]
