"""The main-process half of an export: merge the checkpoint's adapter into the base model
(float32) and prove it, the merged model's greedy reference replies, and the merged model
written as a Hugging Face checkpoint for litert-torch."""

from __future__ import annotations

import contextlib
import gc
import math
import time
from pathlib import Path
from typing import Any

from pipeline.errors import ExportError, JobCancelled, PipelineError
from pipeline.events import EventSink, Progress, StageDone, StageStarted, StopCheck
from pipeline.export.options import TEMPLATE, ExportOptions, human_bytes
from pipeline.export.verify import Reference
from pipeline.models.config import GemmaArch
from pipeline.workspace import Workspace


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    from pipeline.models.tokenizer import BOS_ID

    text = TEMPLATE["user_prefix"] + prompt + TEMPLATE["user_suffix"] + TEMPLATE["model_prefix"]
    return [BOS_ID, *tokenizer.encode(text)]


class Stage:
    def __init__(self, name: str, on_event: EventSink, detail: str = "") -> None:
        self.name, self.on_event, self.detail = name, on_event, detail
        self.summary = ""

    def __enter__(self) -> Stage:
        self.start = time.perf_counter()
        self.on_event(StageStarted(self.name, self.detail))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            self.seconds = time.perf_counter() - self.start
            self.on_event(StageDone(self.name, self.summary or self.name, self.seconds))


def merge_and_reference(
    source: Any,
    options: ExportOptions,
    hf_dir: Path,
    workspace: Workspace,
    on_event: EventSink,
    should_stop: StopCheck,
    stages: dict[str, float],
) -> tuple[list[Reference], dict[str, Any], GemmaArch, str]:
    """Merge, reference replies and the HF checkpoint; returns (references, merge facts,
    arch, base model description). All JAX state is dropped before it returns."""
    import numpy as np

    from pipeline.export.hf_checkpoint import save_hf_checkpoint
    from pipeline.models.loader import load_model
    from pipeline.models.lora import keras_kernel_path, merge_into_backbone
    from pipeline.training.checkpoint import load_checkpoint

    with Stage("merge", on_event, f"{source.checkpoint.name} into {source.model_source}") as st:
        try:
            ckpt = load_checkpoint(source.checkpoint)
        except PipelineError as exc:
            raise ExportError(exc.message, hint=exc.hint) from exc
        model = load_model(
            source.model_source,
            dtype="float32",
            workspace=workspace,
            on_event=on_event,
            should_stop=should_stop,
        )
        backbone, tokenizer, arch = model.backbone, model.tokenizer, model.arch
        meta = ckpt.meta
        from pipeline.models.gemma3_jax import logits, params_from_backbone

        variables = {v.path: v for v in backbone.weights}
        targets = [
            keras_kernel_path(i, t) for i in range(meta.arch.num_layers) for t in meta.targets
        ]
        before = {p: np.array(variables[p].value) for p in targets if p in variables}
        base_params = params_from_backbone(backbone)
        merge_into_backbone(backbone, ckpt.adapter, meta)
        merged_params = params_from_backbone(backbone)
        nonzero_b = {
            keras_kernel_path(i, t)
            for i in range(meta.arch.num_layers)
            for t in meta.targets
            if np.any(np.asarray(ckpt.adapter["layers"][i][t]["b"]) != 0)
        }
        changed = {
            p for p in targets if not np.array_equal(before[p], np.array(variables[p].value))
        }
        if nonzero_b - changed:
            raise ExportError(
                f"the merge left {len(nonzero_b - changed)} trained kernel(s) unchanged "
                f"(e.g. {sorted(nonzero_b - changed)[0]})"
            )
        import jax.numpy as jnp

        probe = jnp.asarray(
            [prompt_ids(tokenizer, options.prompts[0] if options.prompts else "Hi")]
        )
        with_lora = logits(base_params, ckpt.adapter, probe, arch=arch, lora_scale=meta.scale)
        merged = logits(merged_params, None, probe, arch=arch)
        diff = float(jnp.max(jnp.abs(with_lora - merged)))
        scale = float(jnp.max(jnp.abs(with_lora))) or 1.0
        if not math.isfinite(diff) or diff > 1e-3 * max(scale, 1.0):
            raise ExportError(
                f"the merged model's logits differ from the LoRA model's by {diff:.3g} "
                f"(largest logit {scale:.3g}); the merge is wrong, nothing was exported"
            )
        merge = {
            "rank": meta.rank,
            "alpha": meta.alpha,
            "targets": list(meta.targets),
            "kernels_changed": len(changed),
            "kernels_targeted": len(targets),
            "max_abs_logit_diff_vs_lora": diff,
        }
        st.summary = (
            f"merged r{meta.rank} adapter ({len(changed)}/{len(targets)} kernels changed; "
            f"logits match the LoRA model to {diff:.1e})"
        )
        del base_params
    stages["merge"] = st.seconds
    if should_stop():
        raise JobCancelled("export cancelled after the merge")

    refs: list[Reference] = []
    if options.verify:
        from pipeline.models.tokenizer import END_OF_TURN_ID, EOS_ID
        from pipeline.training.generate import greedy_ids

        with Stage(
            "reference", on_event, f"{len(options.prompts)} prompts, greedy, JAX float32"
        ) as st:
            for i, prompt in enumerate(options.prompts):
                ids = prompt_ids(tokenizer, prompt)
                if len(ids) + options.max_new_tokens > options.kv_len:
                    raise ExportError(
                        f"verification prompt {i + 1} ({len(ids)} tokens) plus "
                        f"{options.max_new_tokens} new tokens exceeds the KV cache of "
                        f"{options.kv_len}"
                    )
                out = greedy_ids(
                    merged_params,
                    None,
                    ids,
                    arch=arch,
                    max_new_tokens=options.max_new_tokens,
                    stop_ids=(),
                )
                cut = next((j for j, t in enumerate(out) if t in (EOS_ID, END_OF_TURN_ID)), None)
                refs.append(
                    Reference(
                        prompt=prompt,
                        prompt_ids=tuple(ids),
                        ids=tuple(out if cut is None else out[:cut]),
                        stopped=None if cut is None else out[cut],
                    )
                )
                on_event(Progress("reference", i + 1, len(options.prompts), "prompts"))
                if should_stop():
                    raise JobCancelled("export cancelled while generating the reference replies")
            stopped = sum(r.stopped is not None for r in refs)
            st.summary = f"reference replies to {len(refs)} prompts ({stopped} ended by themselves)"
        stages["reference"] = st.seconds

    with Stage("checkpoint", on_event, str(hf_dir)) as st:
        save_hf_checkpoint(backbone, hf_dir, tokenizer_proto=tokenizer.proto)
        size = sum(p.stat().st_size for p in hf_dir.iterdir())
        st.summary = f"merged Hugging Face checkpoint, float32, {human_bytes(size)}"
    stages["checkpoint"] = st.seconds
    description = model.description
    del model, backbone, merged_params, variables, before, ckpt
    gc.collect()
    with contextlib.suppress(Exception):
        import jax

        jax.clear_caches()
    return refs, merge, arch, description


def check_peft_file(folder: Path) -> None:
    """The checkpoint's PEFT copy must be a readable safetensors file (a damaged one means
    the folder is damaged; exporting it would ship a fine-tune nobody can reproduce)."""
    from pipeline.errors import ModelSourceError
    from pipeline.export.hf_checkpoint import read_safetensors
    from pipeline.training.checkpoint import PEFT_WEIGHTS

    path = folder / PEFT_WEIGHTS
    if not path.exists():
        return
    try:
        read_safetensors(path)
    except ModelSourceError as exc:
        raise ExportError(
            f"checkpoint {folder} is damaged: {exc.message}",
            hint="Export another checkpoint of the run; this one was not written completely.",
        ) from exc
