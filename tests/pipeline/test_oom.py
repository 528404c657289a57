"""Out-of-memory mapping, tested with real XLA out-of-memory errors on the CPU.

XLA's CPU client asks the allocator for a buffer and, when malloc refuses it, raises
``JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating N bytes.``. With Linux's
default heuristic overcommit (``vm.overcommit_memory`` 0) a request for 1 or 4 TiB is refused
at once, without touching memory, so these tests cost ~0.2 GB and a fraction of a second.
An output buffer is allocated when the computation is dispatched (the error comes from the
call); a temporary buffer only when it runs (the error comes from the first read of a result).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import OutOfMemoryError
from pipeline.models.config import ARCH_1B, ARCH_TINY
from pipeline.profiles import load_profile
from pipeline.profiles.schema import Profile
from pipeline.training.trainer import _is_oom, _oom_error
from tests.conftest import REPO
from tests.tiny_run import tiny_profile_toml

GiB = 1024**3
HUGE = 2**40
"""float32 elements: 4 TiB, far beyond any host's RAM + swap."""


def _overcommit() -> str:
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip()
    except OSError:
        return "?"


pytestmark = pytest.mark.skipif(
    _overcommit() == "1",
    reason="vm.overcommit_memory = 1: malloc would grant 4 TiB and XLA would touch it",
)


def on_cpu() -> Any:
    """Run on the CPU device even where JAX has a GPU (the errors tested are the CPU's)."""
    import jax

    return jax.default_device(jax.devices("cpu")[0])


def output_oom() -> BaseException:
    """The error XLA raises when it cannot allocate a computation's output (at dispatch)."""
    import jax
    import jax.numpy as jnp

    try:
        with on_cpu():
            jax.jit(lambda: jnp.zeros((HUGE,), jnp.float32))()
    except Exception as exc:
        return exc
    raise AssertionError("XLA allocated 4 TiB")


def temp_oom() -> BaseException:
    """The error XLA raises when it cannot allocate a temporary buffer: the call returns,
    reading the result raises."""
    import jax
    import jax.numpy as jnp

    n = HUGE // 4  # 1 TiB of float32; sort needs it materialised
    with on_cpu():
        result = jax.jit(
            lambda x: jnp.sort(jnp.full((n,), x) * jnp.arange(n, dtype=jnp.float32))[0]
        )(1.0)
    try:
        jax.device_get(result)
    except Exception as exc:
        return exc
    raise AssertionError("XLA allocated 1 TiB")


def test_xla_cpu_refuses_a_huge_allocation_fast_without_allocating() -> None:
    code = textwrap.dedent(
        """
        import json, resource, time
        import jax, jax.numpy as jnp
        jnp.zeros(1).block_until_ready()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            jax.jit(lambda: jnp.zeros((2**40,), jnp.float32))()
            error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"error": error, "seconds": seconds, "grew_kib": after - before}))
        """
    )
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] == (
        "JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 4398046511104 bytes."
    )
    assert result["seconds"] < 10  # 0.1 s measured
    assert result["grew_kib"] < 256 * 1024  # nothing of the 4 TiB was touched


@pytest.mark.parametrize("make", [output_oom, temp_oom], ids=["output", "temporary"])
def test_real_xla_oom_is_recognised(make: Any) -> None:
    exc = make()
    assert type(exc).__name__ == "JaxRuntimeError"
    assert "RESOURCE_EXHAUSTED" in str(exc)
    assert _is_oom(exc)


def test_other_errors_are_not_oom() -> None:
    import jax
    import jax.numpy as jnp

    with pytest.raises(Exception) as info:
        jax.jit(lambda x: x.reshape(3))(jnp.zeros(4))
    assert not _is_oom(info.value)
    assert not _is_oom(ValueError("the loss became nan"))


def _profile(name: str, **train: Any) -> Profile:
    profile = load_profile(name)
    return dataclasses.replace(profile, train=dataclasses.replace(profile.train, **train))


GENERIC_FIELDS = (
    "train.batch_size",
    "train.gradient_accumulation_steps",
    "train.remat",
    "train.sequence_length",
    "train.loss_chunk_size",
)


def test_oom_error_names_the_shape_and_what_to_change() -> None:
    # On the CPU, JAX reports no memory limit: the hint is the generic list of fields.
    exc = output_oom()
    profile = _profile("cpu-smoke")
    error = _oom_error(profile, ARCH_TINY, exc)
    assert isinstance(error, OutOfMemoryError)
    assert error.message == (
        "out of accelerator memory at batch_size 2 x sequence_length 128 (profile cpu-smoke): "
        "RESOURCE_EXHAUSTED: Out of memory allocating 4398046511104 bytes."
    )
    assert error.hint is not None
    for name in GENERIC_FIELDS:
        assert name in error.hint
    assert error.exit_code == 2 and error.title == "Out of GPU memory"


def test_oom_error_gives_the_estimates_advice_under_a_memory_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a 12 GB card (JAX's bytes_limit), batch 16 x 1024 of the 1B model does not fit:
    # the hint is the memory estimate's advice, a concrete profile change.
    import pipeline.utils.gpu as gpu

    monkeypatch.setattr(gpu, "jax_memory", lambda device=None: {"bytes_limit": 12 * GiB})
    profile = _profile("rtx3060-12gb", batch_size=16, gradient_accumulation_steps=1)
    error = _oom_error(profile, ARCH_1B, temp_oom())
    assert "batch_size 16 x sequence_length 1024 (profile rtx3060-12gb)" in error.message
    assert error.hint is not None
    assert "does not fit this GPU" in error.hint
    assert "To fit, set train.batch_size = 4 with train.gradient_accumulation_steps = 4" in (
        error.hint
    )
    # When the estimate thinks it fits (it was wrong: XLA ran out), the generic hint stays.
    fits = _profile("rtx3060-12gb")
    hint = _oom_error(fits, ARCH_1B, temp_oom()).hint
    assert hint is not None and all(name in hint for name in GENERIC_FIELDS)


# --------------------------------------------------------------------------- in the trainer

TINY_PROFILE = tiny_profile_toml("tiny-oom", max_steps=4, checkpoint_every=0)


@pytest.fixture
def cpu_backend() -> None:
    """The trainer tests need JAX's default backend to be the CPU (where a temporary
    buffer's OOM surfaces when the result is read)."""
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("the trainer runs on a GPU here; these tests need JAX_PLATFORMS=cpu")


def _train_with_oom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> Path:
    """Run the trainer on the tiny model with a step whose XLA computation runs out of
    memory: at dispatch (``where="output"``) or when its metrics are read ("temporary").
    Returns the run folder; the trainer's exception propagates."""
    import jax
    import jax.numpy as jnp

    import pipeline.training.step as step_module
    from pipeline.training.trainer import train
    from pipeline.workspace import Workspace

    real = step_module.build_train_step
    n = HUGE // 4

    def build(*args: Any, **kwargs: Any) -> Any:
        compiled = real(*args, **kwargs)

        class OomStep:
            eval = compiled.eval

            @staticmethod
            def run(adapter: Any, opt_state: Any, frozen: Any, batch: Any) -> Any:
                if where == "output":  # raises here, like an output buffer too large
                    jax.jit(lambda: jnp.zeros((HUGE,), jnp.float32))()
                # returns; reading the "metrics" raises, like a temporary buffer too large
                loss = jax.jit(
                    lambda x: jnp.sort(jnp.full((n,), x) * jnp.arange(n, dtype=jnp.float32))[0]
                )(1.0)
                return adapter, opt_state, {"loss": loss}

        return OomStep()

    monkeypatch.setattr(step_module, "build_train_step", build)
    data = tmp_path / "chat.jsonl"
    rows = [
        {"conversations": [{"from": "human", "value": f"{i}?"}, {"from": "gpt", "value": f"{i}."}]}
        for i in range(8)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    (tmp_path / "tiny-oom.toml").write_text(TINY_PROFILE)
    profile = load_profile(tmp_path / "tiny-oom.toml")
    train(profile, data=data, run_dir=run_dir, workspace=Workspace(tmp_path / "ws"))
    return run_dir


def _check_failed_run(run_dir: Path, info: pytest.ExceptionInfo[OutOfMemoryError]) -> None:
    assert "batch_size 2 x sequence_length 64 (profile tiny-oom)" in info.value.message
    assert "RESOURCE_EXHAUSTED" in info.value.message
    assert info.value.hint and "train.batch_size" in info.value.hint
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed"
    assert "batch_size 2 x sequence_length 64" in record["error"]
    assert "out of accelerator memory" in (run_dir / "log.txt").read_text()


@pytest.mark.slow
def test_trainer_maps_an_oom_at_dispatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_backend: None
) -> None:
    with pytest.raises(OutOfMemoryError) as info:
        _train_with_oom(tmp_path, monkeypatch, "output")
    _check_failed_run(tmp_path / "run", info)


@pytest.mark.slow
def test_trainer_maps_an_oom_when_the_metrics_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_backend: None
) -> None:
    with pytest.raises(OutOfMemoryError) as info:
        _train_with_oom(tmp_path, monkeypatch, "temporary")
    _check_failed_run(tmp_path / "run", info)
