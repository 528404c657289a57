"""The JAX training forward, the fused loss and the step, on the tiny Gemma 3 (CPU, float32)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")

jax = pytest.importorskip("jax")
jnp = jax.numpy

import itertools  # noqa: E402

from pipeline.models import gemma3_jax as g  # noqa: E402
from pipeline.models.config import ARCH_TINY, build_backbone  # noqa: E402
from pipeline.profiles.schema import TrainConfig  # noqa: E402
from pipeline.training import optimizer  # noqa: E402
from pipeline.training.loss import chunked_ce_sum, full_ce_sum  # noqa: E402
from pipeline.training.step import build_train_step  # noqa: E402


class _Meta:
    scale = 2.0


@pytest.fixture(scope="module")
def tiny_backbone() -> Any:
    bb = build_backbone(ARCH_TINY, seed=0)
    rng = np.random.default_rng(0)
    for v in bb.weights:  # non-zero norm scales, so a wrong norm convention shows
        if "scale" in v.path:
            v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))
    return bb


def _adapter(rng: np.random.Generator, targets: tuple[str, ...], r: int = 4) -> dict[str, Any]:
    a = ARCH_TINY
    dims = {
        "q": (a.hidden_dim, a.q_dim),
        "k": (a.hidden_dim, a.kv_dim),
        "v": (a.hidden_dim, a.kv_dim),
        "o": (a.q_dim, a.hidden_dim),
        "gate": (a.hidden_dim, a.intermediate_dim),
        "up": (a.hidden_dim, a.intermediate_dim),
        "down": (a.intermediate_dim, a.hidden_dim),
    }
    return {
        "layers": [
            {
                t: {
                    "a": jnp.asarray(rng.normal(0, 0.1, (dims[t][0], r)).astype("float32")),
                    "b": jnp.asarray(rng.normal(0, 0.1, (r, dims[t][1])).astype("float32")),
                }
                for t in targets
            }
            for _ in range(a.num_layers)
        ]
    }


def test_forward_equals_keras_hub_backbone(tiny_backbone: Any) -> None:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 262144, size=(2, 40)).astype("int32")  # 40 > window 16
    pad = np.ones_like(ids)
    pad[1, 30:] = 0
    want = np.asarray(tiny_backbone({"token_ids": ids, "padding_mask": pad}))
    params = g.params_from_backbone(tiny_backbone)
    got = np.asarray(
        g.hidden_states(
            params, None, jnp.asarray(ids), arch=ARCH_TINY, segment_ids=jnp.asarray(pad)
        )
    )
    assert np.abs(got[0] - want[0]).max() < 5e-5
    assert np.abs(got[1, :30] - want[1, :30]).max() < 5e-5


def test_lora_path_equals_merged_kernels(tiny_backbone: Any) -> None:
    """(x@A)@B on the flat matrices == keras-hub with W + s*A@B folded into its kernels."""
    rng = np.random.default_rng(2)
    targets = ("q", "k", "v", "o", "gate", "up", "down")
    adapter = _adapter(rng, targets)
    ids = rng.integers(0, 262144, size=(1, 24)).astype("int32")
    params = g.params_from_backbone(tiny_backbone)
    got = np.asarray(
        g.hidden_states(params, adapter, jnp.asarray(ids), arch=ARCH_TINY, lora_scale=2.0)
    )
    merged = build_backbone(ARCH_TINY, seed=0)
    a = ARCH_TINY
    for src, dst in zip(tiny_backbone.weights, merged.weights, strict=False):
        dst.assign(np.array(src.numpy()))
    names = {"q": "query", "k": "key", "v": "value", "o": "attention_output"}
    names |= {"gate": "ffw_gating", "up": "ffw_gating_2", "down": "ffw_linear"}
    by_path = {v.path: v for v in merged.weights}
    for i, layer in enumerate(adapter["layers"]):
        for t, ab in layer.items():
            delta = 2.0 * np.asarray(ab["a"]) @ np.asarray(ab["b"])
            sub = "attention/" if t in ("q", "k", "v", "o") else ""
            var = by_path[f"decoder_block_{i}/{sub}{names[t]}/kernel"]
            k = np.array(var.numpy())
            if t == "q" or t in ("k", "v"):
                heads = k.shape[0]
                delta = delta.reshape(a.hidden_dim, heads, a.head_dim).transpose(1, 0, 2)
            elif t == "o":
                delta = delta.reshape(a.num_query_heads, a.head_dim, a.hidden_dim)
            var.assign(k + delta)
    want = np.asarray(merged({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
    assert np.abs(got - want).max() < 5e-5


def test_packed_rows_equal_separate_examples(tiny_backbone: Any) -> None:
    rng = np.random.default_rng(3)
    params = g.params_from_backbone(tiny_backbone)
    a = rng.integers(0, 262144, 15).astype("int32")
    b = rng.integers(0, 262144, 25).astype("int32")
    row = np.concatenate([a, b, [0, 0]])[None]
    pos = np.concatenate([np.arange(15), np.arange(25), [0, 0]])[None].astype("int32")
    seg = np.concatenate([np.full(15, 1), np.full(25, 2), [0, 0]])[None].astype("int32")
    packed = np.asarray(
        g.hidden_states(
            params, None, jnp.asarray(row), arch=ARCH_TINY,
            positions=jnp.asarray(pos), segment_ids=jnp.asarray(seg),
        )
    )  # fmt: skip
    alone_a = np.asarray(g.hidden_states(params, None, jnp.asarray(a[None]), arch=ARCH_TINY))
    alone_b = np.asarray(g.hidden_states(params, None, jnp.asarray(b[None]), arch=ARCH_TINY))
    assert np.abs(packed[0, :15] - alone_a[0]).max() < 2e-5
    assert np.abs(packed[0, 15:40] - alone_b[0]).max() < 2e-5
    # and without segment ids the second example would see the first: the test can fail
    leaky = np.asarray(
        g.hidden_states(params, None, jnp.asarray(row), arch=ARCH_TINY, positions=jnp.asarray(pos))
    )
    assert np.abs(leaky[0, 15:40] - alone_b[0]).max() > 1e-3


def test_fused_chunked_loss_matches_full_logits() -> None:
    rng = np.random.default_rng(4)
    h = jnp.asarray(rng.normal(size=(37, 16)).astype("float32"))
    emb = jnp.asarray(rng.normal(size=(1000, 16)).astype("float32"))
    t = jnp.asarray(rng.integers(0, 1000, 37).astype("int32"))
    w = jnp.asarray((rng.random(37) > 0.3).astype("float32"))
    for chunk in (1, 8, 37, 64):
        v1, g1 = jax.value_and_grad(lambda h, c=chunk: chunked_ce_sum(h, emb, t, w, c))(h)
        v2, g2 = jax.value_and_grad(lambda h: full_ce_sum(h, emb, t, w))(h)
        assert abs(float(v1) - float(v2)) < 1e-3
        assert float(jnp.abs(g1 - g2).max()) < 1e-5
    # masked positions contribute nothing
    v0 = chunked_ce_sum(h, emb, t, jnp.zeros_like(w), 8)
    assert float(v0) == 0.0


def test_fused_chunked_loss_on_a_batch_chunks_along_the_sequence() -> None:
    """[B, S, D] input (what the step passes, so a batch split across devices splits every
    chunk): the same value and gradient as full logits, for chunks that do and do not divide
    the sequence."""
    rng = np.random.default_rng(5)
    h = jnp.asarray(rng.normal(size=(3, 13, 16)).astype("float32"))
    emb = jnp.asarray(rng.normal(size=(500, 16)).astype("float32"))
    t = jnp.asarray(rng.integers(0, 500, (3, 13)).astype("int32"))
    w = jnp.asarray((rng.random((3, 13)) > 0.3).astype("float32"))
    v2, g2 = jax.value_and_grad(lambda h: full_ce_sum(h, emb, t, w))(h)
    for chunk in (1, 3, 12, 39, 100):
        v1, g1 = jax.value_and_grad(lambda h, c=chunk: chunked_ce_sum(h, emb, t, w, c))(h)
        assert g1.shape == h.shape
        assert abs(float(v1) - float(v2)) < 1e-3
        assert float(jnp.abs(g1 - g2).max()) < 1e-5


def _batch(rng: np.random.Generator, a: int, b: int, s: int) -> dict[str, np.ndarray]:
    ids = rng.integers(0, 500, size=(a, b, s + 1)).astype("int32")
    return {
        "token_ids": ids[..., :-1],
        "targets": ids[..., 1:],
        "loss_mask": (rng.random((a, b, s)) > 0.2).astype("float32"),
        "segment_ids": np.ones((a, b, s), "int32"),
        "positions": np.broadcast_to(np.arange(s, dtype="int32"), (a, b, s)).copy(),
    }


def _cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "batch_size": 2,
        "sequence_length": 32,
        "learning_rate": 1e-2,
        "max_steps": 10,
        "loss_chunk_size": 8,
        "precision": "float32",
        "packing": False,
    }
    return TrainConfig(**(base | kw))


def test_step_lowers_loss_and_accumulation_equals_big_batch(tiny_backbone: Any) -> None:
    rng = np.random.default_rng(5)
    params = g.params_from_backbone(tiny_backbone)
    adapter0 = _adapter(rng, ("q", "v"))
    big = _batch(rng, 1, 4, 32)
    split = {k: v.reshape(2, 2, 32) for k, v in big.items()}
    results = []
    for cfg, batch in ((_cfg(batch_size=4), big), (_cfg(gradient_accumulation_steps=2), split)):
        step = build_train_step(ARCH_TINY, _Meta(), cfg, total_steps=10)  # type: ignore[arg-type]
        adapter = jax.tree.map(jnp.array, adapter0)
        state = optimizer.init_state(adapter)
        losses = []
        for _ in range(4):
            adapter, state, m = step.run(adapter, state, params, batch)
            losses.append(float(m["loss"]))
        results.append((losses, adapter))
    (l1, a1), (l2, a2) = results
    assert l1[-1] < l1[0]
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    diff = jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), a1, a2)
    assert max(jax.tree.leaves(diff)) < 1e-4  # Adam divides by sqrt(v): tiny grads amplify


@pytest.mark.parametrize("remat", [True, "dots"])
def test_remat_gives_the_same_step(tiny_backbone: Any, remat: Any) -> None:
    rng = np.random.default_rng(6)
    params = g.params_from_backbone(tiny_backbone)
    adapter0 = _adapter(rng, ("q", "v", "down"))
    batch = _batch(rng, 1, 2, 32)
    out = []
    for r in (False, remat):
        step = build_train_step(ARCH_TINY, _Meta(), _cfg(), total_steps=10, remat=r)  # type: ignore[arg-type]
        adapter = jax.tree.map(jnp.array, adapter0)
        adapter, _, m = step.run(adapter, optimizer.init_state(adapter), params, batch)
        out.append((float(m["loss"]), float(m["grad_norm"])))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5)


def test_non_finite_step_changes_nothing(tiny_backbone: Any) -> None:
    rng = np.random.default_rng(7)
    params = g.params_from_backbone(tiny_backbone)
    bad = jax.tree.map(lambda x: x, params)
    bad["final_norm"] = jnp.full_like(params["final_norm"], jnp.nan)
    adapter0 = _adapter(rng, ("q",))
    step = build_train_step(ARCH_TINY, _Meta(), _cfg(), total_steps=10)  # type: ignore[arg-type]
    adapter = jax.tree.map(jnp.array, adapter0)
    adapter, state, m = step.run(adapter, optimizer.init_state(adapter), bad, _batch(rng, 1, 2, 32))
    assert not bool(m["finite"])
    assert int(state["count"]) == 0
    same = jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), adapter, adapter0)
    assert all(jax.tree.leaves(same))


def test_schedule_warmup_then_cosine() -> None:
    sched = optimizer.Schedule(peak=1.0, warmup=4, total=20, kind="cosine")
    values = [sched.value(s) for s in range(20)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[4:]))
    assert 0 < values[-1] < 0.05
    flat = optimizer.Schedule(peak=0.5, warmup=0, total=10, kind="constant")
    assert [flat.value(s) for s in (0, 9)] == pytest.approx([0.5, 0.5])


@pytest.mark.slow
def test_forward_equals_keras_hub_on_the_real_270m() -> None:
    """The embedded 270M, float32, a 600-token input (past the 512-token window, so local
    and global layers both matter): our forward equals keras-hub's backbone."""
    from pipeline.models.loader import load_model

    loaded = load_model("embedded", dtype="float32")
    text = "<bos><start_of_turn>user\n" + "Tell me about the sea. " * 110 + "<end_of_turn>\n"
    ids = np.asarray([loaded.tokenizer.encode(text)[:600]], dtype="int32")
    assert ids.shape[1] == 600
    want = np.asarray(loaded.backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
    params = g.params_from_backbone(loaded.backbone)
    got = np.asarray(g.hidden_states(params, None, jnp.asarray(ids), arch=loaded.arch))
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() < 1e-4 * max(scale, 1.0)
    # and the logits' argmax agree at every position
    emb = np.asarray(params["embed"])
    assert (np.argmax(got[0] @ emb.T, -1) == np.argmax(want[0] @ emb.T, -1)).all()
