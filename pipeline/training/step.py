"""The jitted LoRA training step and the eval step.

One optimizer step takes a batch with a leading micro-batch axis ``[A, B, S]`` (A =
gradient_accumulation_steps), scans the micro-batches summing the un-normalised loss and its
gradient, divides both by the number of trained tokens in the whole step (so accumulation
equals one large batch), clips, and applies AdamW. The LoRA weights and optimizer state are
donated; the frozen weights are passed in (never closed over: a closed-over 600 MB embedding
would be baked into the program as a constant).

Batch keys (from :mod:`pipeline.training.batches`): ``token_ids``, ``targets``, ``loss_mask``,
``segment_ids``, ``positions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.models.config import GemmaArch
from pipeline.training import optimizer

if TYPE_CHECKING:
    from pipeline.models.lora import AdapterMeta
    from pipeline.profiles.schema import TrainConfig
    from pipeline.training.distribute import Placement

BATCH_KEYS = ("token_ids", "targets", "loss_mask", "segment_ids", "positions")


def _loss_sum(
    adapter: Any,
    frozen: Any,
    batch: dict[str, Any],
    *,
    arch: GemmaArch,
    lora_scale: float,
    chunk_tokens: int,
    packed: bool,
    impl: str,
    remat: bool | str,
    dtype: str,
) -> tuple[Any, Any]:
    import jax.numpy as jnp

    from pipeline.models.gemma3_jax import hidden_states
    from pipeline.training.loss import chunked_ce_sum, full_ce_sum

    h = hidden_states(
        frozen,
        adapter,
        batch["token_ids"],
        arch=arch,
        lora_scale=lora_scale,
        positions=batch["positions"],
        segment_ids=batch["segment_ids"] if packed else None,
        impl=impl,  # type: ignore[arg-type]
        remat=remat,
        dtype=dtype,
    )
    targets = batch["targets"]
    weights = batch["loss_mask"].astype(jnp.float32)
    if chunk_tokens > 0:
        total = chunked_ce_sum(h, frozen["embed"], targets, weights, chunk_tokens)
    else:
        total = full_ce_sum(h, frozen["embed"], targets, weights)
    return total, jnp.sum(weights)


def _remat_mode(train: TrainConfig) -> bool | str:
    """The ``remat`` argument of the forward for the profile's remat and remat_policy."""
    if not train.remat:
        return False
    return "dots" if train.remat_policy == "dots" else True


@dataclass
class TrainStep:
    """``run(adapter, opt_state, frozen, batch) -> (adapter, opt_state, metrics)`` (jitted,
    adapter and opt_state donated) and ``eval(adapter, frozen, batch) -> (loss_sum, tokens)``.

    ``metrics``: loss (mean over trained tokens), grad_norm, lr, trained_tokens, tokens
    (non-padding), finite (bool)."""

    run: Any
    eval: Any
    schedule: optimizer.Schedule
    packed: bool
    impl: str


def build_train_step(
    arch: GemmaArch,
    meta: AdapterMeta,
    train: TrainConfig,
    *,
    total_steps: int,
    compute_dtype: str | None = None,
    impl: str | None = None,
    remat: bool | str | None = None,
    placement: Placement | None = None,
) -> TrainStep:
    """Compile-ready step functions for ``arch`` with the adapter ``meta`` and profile
    ``train`` (batch shapes come from the first call). ``remat`` overrides
    ``train.remat`` (see :func:`pipeline.models.gemma3_jax.hidden_states`).

    With a ``placement`` (:mod:`pipeline.training.distribute`) the inputs carry its shardings
    and every output (the new LoRA weights, optimizer state and metrics) is replicated; the
    step itself is the same program, partitioned by XLA."""
    import jax
    import jax.numpy as jnp

    from pipeline.models.gemma3_jax import default_attention_impl

    impl = impl or default_attention_impl()
    dtype = compute_dtype or train.precision
    schedule = optimizer.Schedule(
        peak=train.learning_rate,
        warmup=train.resolved_warmup_steps(total_steps),
        total=total_steps,
        kind=train.schedule,
    )
    chunk_tokens = train.loss_chunk_size * train.batch_size
    kwargs = {
        "arch": arch,
        "lora_scale": meta.scale,
        "chunk_tokens": chunk_tokens,
        "packed": train.packing,
        "impl": impl,
        "remat": _remat_mode(train) if remat is None else remat,
        "dtype": dtype,
    }

    def loss_sum(adapter: Any, frozen: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        return _loss_sum(adapter, frozen, batch, **kwargs)  # type: ignore[arg-type]

    grad_fn = jax.value_and_grad(loss_sum, has_aux=True)

    def run(adapter: Any, opt_state: Any, frozen: Any, batch: dict[str, Any]) -> Any:
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), adapter)

        def micro(carry: Any, mb: dict[str, Any]) -> Any:
            grads, loss, trained = carry
            (value, count), g = grad_fn(adapter, frozen, mb)
            grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
            return (grads, loss + value, trained + count), None

        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (grads, loss, trained), _ = jax.lax.scan(micro, init, batch)
        denom = jnp.maximum(trained, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        mean_loss = loss / denom
        new_adapter, new_state, info = optimizer.apply(
            adapter,
            grads,
            opt_state,
            schedule=schedule,
            weight_decay=train.weight_decay,
            max_grad_norm=train.max_grad_norm,
        )
        finite = jnp.isfinite(mean_loss) & jnp.isfinite(info["grad_norm"])
        metrics = {
            "loss": mean_loss,
            "grad_norm": info["grad_norm"],
            "lr": info["lr"],
            "trained_tokens": trained,
            "tokens": jnp.sum(batch["segment_ids"] > 0),
            "finite": finite,
        }
        return new_adapter, new_state, metrics

    def eval_step(adapter: Any, frozen: Any, batch: dict[str, Any]) -> Any:
        return loss_sum(adapter, frozen, batch)

    out = {} if placement is None else {"out_shardings": placement.replicated}
    return TrainStep(
        run=jax.jit(run, donate_argnums=(0, 1), **out),
        eval=jax.jit(eval_step, **out),
        schedule=schedule,
        packed=train.packing,
        impl=impl,
    )


def stack_micro_batches(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """``[A]`` dicts of ``[B, S]`` numpy arrays -> one dict of ``[A, B, S]`` arrays."""
    import numpy as np

    return {k: np.stack([b[k] for b in batches]) for k in BATCH_KEYS}
