"""Proof that fine-tuning works: the embedded Gemma 3 270M learns a new identity on the CPU.

LLaMA-Factory's identity set (../shared/datasets/identity.json) with ``{{name}}`` and
``{{author}}`` filled in. After a short LoRA run the training loss has fallen by at least
half and the greedy reply to "Who are you?" (through the Gemma 3 chat template) names the
new identity; the pretrained model alone does not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.profiles.schema import DataConfig, LoraConfig, ModelConfig, Profile, TrainConfig

os.environ.setdefault("KERAS_BACKEND", "jax")

NAME, AUTHOR = "Quillbot Zephyr", "Larkspur Labs"


def _identity_file(shared_datasets: Path, tmp_path: Path) -> Path:
    rows = json.loads((shared_datasets / "identity.json").read_text(encoding="utf-8"))
    for row in rows:
        for key in ("instruction", "input", "output"):
            row[key] = row[key].replace("{{name}}", NAME).replace("{{author}}", AUTHOR)
    out = tmp_path / "identity_filled.json"
    out.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return out


def _profile() -> Profile:
    return Profile(
        name="identity-proof",
        model=ModelConfig(source="embedded", dtype="float32"),
        lora=LoraConfig(rank=8, alpha=16.0, targets=("q", "k", "v", "o")),
        train=TrainConfig(
            batch_size=4,
            sequence_length=96,
            learning_rate=3e-3,
            warmup_steps=2,
            max_steps=24,
            weight_decay=0.0,
            checkpoint_every=0,
            eval_every=0,
            seed=0,
            precision="float32",
            packing=True,
            loss_chunk_size=96,
        ),
        data=DataConfig(dedup="none"),
    )


@pytest.fixture(scope="module")
def identity_run(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from pipeline.training.trainer import train

    tmp_path = tmp_path_factory.mktemp("identity")
    data = _identity_file(shared_datasets, tmp_path)
    # The model cache lives in the default workspace (shared with the other real-model tests);
    # the run itself goes to tmp_path.
    return train(_profile(), data=data, run_dir=tmp_path / "run")


@pytest.mark.slow
def test_identity_finetune_learns_the_new_name(identity_run: Any) -> None:
    import jax

    from pipeline.data.formatter import format_prompt
    from pipeline.data.types import Conversation, Turn
    from pipeline.models.gemma3_jax import params_from_backbone
    from pipeline.models.loader import load_model
    from pipeline.models.lora import load_npz
    from pipeline.training.generate import greedy_ids
    from pipeline.training.runs import read_metrics

    result = identity_run
    assert result.status == "finished", result.message
    losses = [
        r["loss"] for r in read_metrics(result.run_dir / "metrics.jsonl") if r["type"] == "train"
    ]
    assert len(losses) == 24
    first, last = sum(losses[:2]) / 2, sum(losses[-3:]) / 3
    assert last <= first / 2, f"loss {first:.3f} -> {last:.3f}: did not fall by half"

    loaded = load_model("embedded", dtype="float32")
    params = params_from_backbone(loaded.backbone)
    adapter, meta = load_npz(result.run_dir / "final" / "adapter.npz")
    conv = Conversation(turns=(Turn(role="user", text="Who are you?"),))
    prompt = loaded.tokenizer.encode(format_prompt(conv))
    adapter_dev: Any = jax.tree.map(jax.numpy.asarray, adapter)
    tuned = loaded.tokenizer.decode(
        greedy_ids(
            params, adapter_dev, prompt, arch=loaded.arch, lora_scale=meta.scale, max_new_tokens=24
        )
    )
    base = loaded.tokenizer.decode(
        greedy_ids(params, None, prompt, arch=loaded.arch, max_new_tokens=24)
    )
    print(f"\nidentity: loss {first:.3f} -> {last:.3f}; base {base!r}; tuned {tuned!r}")
    assert "Quillbot" in tuned, f"fine-tuned reply: {tuned!r}"
    assert "Quillbot" not in base, f"base reply already says it: {base!r}"


@pytest.mark.slow
def test_identity_run_exports_to_int8_bundles_that_answer_alike(
    identity_run: Any, tmp_path: Path
) -> None:
    """The real 270M chain: the fine-tuned run merged, converted to dynamic int8, bundled as
    .task and .litertlm, and verified; the bundles still say the new name."""
    from pipeline.export.env import find_export_env
    from pipeline.export.job import ExportOptions, export_run
    from pipeline.workspace import Workspace

    if find_export_env() is None:
        pytest.skip("no export environment: run `bash scripts/make_export_env.sh`")
    options = ExportOptions(
        quant="dynamic_int8",
        prompts=("Who are you?", "What is your name?", "Who made you?"),
        max_new_tokens=48,
    )
    result = export_run(identity_run.run_dir, options=options, workspace=Workspace(tmp_path / "ws"))
    report = result.report
    assert report is not None
    print("\n" + (result.out_dir / "verify.md").read_text())
    assert result.status == "ok" and report.passed, report.summary()
    interp = report.runtimes[0]
    assert interp.runtime == "interpreter" and interp.gate >= 0.9
    # where a reply ended by itself, the bundles ended there too (24 steps rarely teach the
    # 270M to stop; the tiny chain in test_export.py exercises the stop test for sure)
    assert all(r.stop_fail == 0 for r in report.runtimes)
    replies = [p.got_text for r in report.runtimes for p in r.prompts]
    assert sum("Quillbot" in text for text in replies) >= len(replies) // 2, replies
    sizes = result.files
    assert 270e6 < sizes[f"{result.out_dir.name}.task"] < 300e6
