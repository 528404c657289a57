"""Runs tiny training on several CPU devices for tests/pipeline/test_multi_device.py.

JAX fixes its device count when it starts, so the tests run this file in a fresh process:

- ``suite OUT ROOT`` with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``: the
  layouts a placement gives, then the same run on 1 device, on 2 (data parallel), on 2 as
  1 x 2 model parallel, a run stopped at step 2 on 2 devices and resumed on 1, and the other
  way round.
- ``host OUT ROOT`` with Keras' multi-process variables set: one process of a two-process
  ("two hosts") run, each process with one CPU device and its own workspace.

Each writes a JSON of losses (by step) and final LoRA weights to OUT.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.tiny_run import tiny_profile_toml, write_chat_jsonl  # noqa: E402

STEPS = 4


def profile(name: str, **train: Any) -> Any:
    from pipeline.profiles.io import loads_profile

    fields = {"batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 5e-2}
    fields |= {"checkpoint_every": 2, "max_steps": STEPS, "seed": 3, **train}
    return loads_profile(tiny_profile_toml(name, **fields))


def final_adapter(run_dir: Path) -> dict[str, list[float]]:
    import numpy as np

    with np.load(run_dir / "final" / "adapter.npz") as z:
        return {k: z[k].astype("float64").ravel().tolist() for k in sorted(z.files)}


def run(root: Path, name: str, *, stop_after: int | None = None, resume: Path | None = None,
        devices: str | None = None, **train: Any) -> dict[str, Any]:  # fmt: skip
    from pipeline.events import RunStarted, StepMetrics
    from pipeline.training.trainer import train as train_run
    from pipeline.workspace import Workspace

    events: list[Any] = []
    seen = {"step": 0}

    def on_event(event: Any) -> None:
        events.append(event)
        if isinstance(event, StepMetrics):
            seen["step"] = event.step

    def should_stop() -> bool:
        return stop_after is not None and seen["step"] >= stop_after

    data = write_chat_jsonl(root / "chat.jsonl", 40)
    result = train_run(
        profile(name, **train), data=data, workspace=Workspace(root / "ws"),
        run_dir=None if resume else root / name, resume=resume, on_event=on_event,
        should_stop=should_stop, devices=devices,
    )  # fmt: skip
    started = next(e for e in events if isinstance(e, RunStarted))
    steps = [e for e in events if isinstance(e, StepMetrics)]
    out = {
        "status": result.status,
        "step": result.step,
        "run_dir": str(result.run_dir),
        "losses": {str(e.step): e.loss for e in steps},
        "devices": list(started.devices),
        "placement": started.placement,
        "memory_devices": [d.device for d in steps[-1].devices] if steps else [],
    }
    if result.status == "finished":
        out["adapter"] = final_adapter(Path(result.run_dir))
    return out


def layouts() -> dict[str, Any]:
    """Shard shapes of a batch, the embedding and a one-head key kernel under each placement."""
    import jax
    import numpy as np

    from pipeline.profiles.schema import TrainConfig
    from pipeline.training.distribute import plan_placement

    out: dict[str, Any] = {"visible": [str(d) for d in jax.devices()]}
    batch = {"token_ids": np.zeros((2, 4, 8), "int32")}
    frozen = {
        "embed": np.zeros((64, 8), "float32"),
        "final_norm": np.zeros((8,), "float32"),
        "layers": [{"k": np.zeros((1, 8, 4), "float32"), "q": np.zeros((2, 8, 4), "float32")}],
    }
    for name, mp in (("data", 1), ("model", 2)):
        placement = plan_placement(TrainConfig(max_steps=1, devices="2", model_parallel=mp))
        placed = placement.put_frozen(frozen)
        rows = placement.put_batch(batch)["token_ids"]
        out[name] = {
            "describe": placement.describe(4),
            "batch_shards": [list(s.data.shape) for s in rows.addressable_shards],
            "embed_shards": [list(s.data.shape) for s in placed["embed"].addressable_shards],
            "k_shards": [list(s.data.shape) for s in placed["layers"][0]["k"].addressable_shards],
            "q_shards": [list(s.data.shape) for s in placed["layers"][0]["q"].addressable_shards],
        }
    return out


def suite(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"layouts": layouts()}
    out["one"] = run(root, "one", devices="1")
    out["two"] = run(root, "two", devices="2")
    out["model_parallel"] = run(root, "mp", devices="2", model_parallel=2)
    out["auto"] = run(root, "auto", max_steps=1)  # devices = "auto": both
    out["auto_odd"] = run(root, "auto-odd", batch_size=3, max_steps=1)  # 3 rows: one device
    half = run(root, "two-then-one", devices="2", stop_after=2)
    out["two_then_one"] = {"first": half, "rest": run(root, "x", resume=Path(half["run_dir"]),
                                                       devices="1")}  # fmt: skip
    half = run(root, "one-then-two", devices="1", stop_after=2)
    out["one_then_two"] = {"first": half, "rest": run(root, "x", resume=Path(half["run_dir"]),
                                                       devices="2")}  # fmt: skip
    return out


def main() -> int:
    mode, out_path, root = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    root.mkdir(parents=True, exist_ok=True)
    if mode == "suite":
        result = suite(root)
    elif mode == "host":
        result = run(root, "hosts")  # devices = "auto": every process's device
    else:
        raise SystemExit(f"unknown mode {mode}")
    out_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
