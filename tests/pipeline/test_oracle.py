"""Our model loader and tokenizer against Hugging Face transformers (the oracle).

The torch side runs in the oracle interpreter (``oracle_python``) as the scripts in
``tests/oracle/``; arrays come back as .npz files in tmp_path, so this process never imports
torch. The oracle starts first and the keras side works while it runs.

(a) next-token logits of the embedded 270M (our GGUF conversion, float32) against
    transformers' own GGUF loading: a chat prompt (max |diff| < 1e-3, same argmax at every
    position) and a 560-token prompt that crosses the 512-token sliding window;
(b) our tokenizer's ids against transformers' GGUF tokenizer on hard strings;
(c) a tiny random ``Gemma3ForCausalLM`` saved by transformers (float32, and bfloat16 in
    shards) loads with ``load_model`` and gives transformers' logits (max |diff| < 1e-4).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.models.embedded import embedded_gguf_path
from pipeline.models.loader import load_model
from pipeline.models.tokenizer import load_tokenizer
from pipeline.workspace import Workspace

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ORACLE_DIR = REPO / "tests" / "oracle"

CHAT = (
    "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
)
TOKENIZER_STRINGS = [
    "Hello world!",
    "  leading and   multiple   spaces\tand\ttabs\t\t  ",
    "Ünïcödé: naïve café, straße, Ελληνικά, русский, 日本語のテキスト, 中文, 한국어, हिन्दी",
    "Emoji 😀👍🏽🇩🇪 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200b zero-width, \U0001f9ec",
    "code:\n\ndef f(x):\n    return x**2  # comment\n\n\n",
    CHAT,
    "<start_of_turn>user\n你好，世界<end_of_turn>\n<start_of_turn>model\n🙂 Hi!<end_of_turn>\n",
    "numbers 1234567890 3.14159 1,000,000",
]
LONG_TOKENS = 560
"""Longer than the 270M's 512-token sliding window, so local and global layers differ."""
LAST = 8
SUBSET = 1024


def start_oracle(python: Path, script: str, tmp: Path, request: dict[str, Any]):
    req = tmp / f"{Path(script).stem}.json"
    req.write_text(json.dumps(request), encoding="utf-8")
    return subprocess.Popen(
        [str(python), str(ORACLE_DIR / script), str(req)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )


def finish_oracle(proc: subprocess.Popen, out: Path, timeout: float) -> dict[str, np.ndarray]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"the oracle did not finish in {timeout:.0f} s:\n{output[-4000:]}")
    assert proc.returncode == 0, f"oracle failed:\n{output[-4000:]}"
    with np.load(out) as npz:
        return {k: npz[k] for k in npz.files}


def keras_logits(model: Any, ids: list[int]) -> np.ndarray:
    x = {"token_ids": np.array([ids], "int32"), "padding_mask": np.ones((1, len(ids)), "int32")}
    return np.asarray(model.causal_lm(x), dtype=np.float32)[0]


def long_prompt(tokenizer: Any) -> list[int]:
    text = "<bos>"
    k = 0
    while len(tokenizer.encode(text)) <= LONG_TOKENS:
        k += 1
        text += (
            f"Chapter {k}. The river town kept its ledgers in a stone house by the bridge; "
            f"every spring the clerks counted {k * 37} barrels of salt, {k * 11} bolts of "
            "cloth and the names of the boats that came down from the mountains.\n"
        )
    return tokenizer.encode(text)[:LONG_TOKENS]


@pytest.fixture(scope="module")
def gguf_oracle(oracle_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One oracle run (tokenizer ~45 s + model ~90 s) and our side, computed meanwhile."""
    tmp = tmp_path_factory.mktemp("gguf_oracle")
    ws = Workspace.default()
    gguf = embedded_gguf_path(ws)
    tokenizer = load_tokenizer(ws)
    prompts = {"chat": tokenizer.encode(CHAT), "long": long_prompt(tokenizer)}
    subset = np.sort(np.random.default_rng(0).choice(262144, SUBSET, replace=False))
    request = {
        "gguf": str(gguf),
        "strings": TOKENIZER_STRINGS,
        "prompts": prompts,
        "subset": subset.tolist(),
        "last": LAST,
        "out": str(tmp / "gguf_oracle.npz"),
    }
    start = time.perf_counter()
    proc = start_oracle(oracle_python, "gguf_oracle.py", tmp, request)
    try:
        model = load_model("embedded", dtype="float32", workspace=ws)
        ours = {name: keras_logits(model, ids) for name, ids in prompts.items()}
        del model
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    theirs = finish_oracle(proc, tmp / "gguf_oracle.npz", timeout=1500)
    info = json.loads(bytes(theirs.pop("info")))
    print(f"\noracle: {info} ; wall {time.perf_counter() - start:.0f} s")
    return {
        "ours": ours,
        "theirs": theirs,
        "tokenizer": tokenizer,
        "prompts": prompts,
        "subset": subset,
    }


def test_embedded_270m_logits_match_transformers_gguf(gguf_oracle: dict) -> None:
    ours, theirs = gguf_oracle["ours"], gguf_oracle["theirs"]
    chat = ours["chat"]
    assert chat.shape == (len(gguf_oracle["prompts"]["chat"]), 262144)
    diff = float(np.abs(chat - theirs["chat_logits"]).max())
    print(f"\nchat prompt: max |diff| {diff:.2e} (max |logit| {np.abs(chat).max():.1f})")
    assert diff < 1e-3
    assert chat.argmax(-1).tolist() == theirs["chat_argmax"].tolist()

    long = ours["long"]
    diff_last = float(np.abs(long[-LAST:] - theirs["long_last"]).max())
    diff_subset = float(np.abs(long[:, gguf_oracle["subset"]] - theirs["long_subset"]).max())
    same = long.argmax(-1) == theirs["long_argmax"]
    clear = theirs["long_gap"] > 1e-3  # a near-tie may flip either way
    print(
        f"{LONG_TOKENS}-token prompt: max |diff| last {LAST} positions {diff_last:.2e}, "
        f"{SUBSET} vocab ids at every position {diff_subset:.2e}; "
        f"argmax agreement {same.mean():.2%}"
    )
    assert diff_last < 1e-3 and diff_subset < 1e-3
    assert same[clear].all()


def test_tokenizer_ids_match_transformers_gguf_tokenizer(gguf_oracle: dict) -> None:
    tokenizer = gguf_oracle["tokenizer"]
    for i, text in enumerate(TOKENIZER_STRINGS):
        assert tokenizer.encode(text) == gguf_oracle["theirs"][f"tok_{i}"].tolist(), text


def test_hf_folder_matches_transformers(oracle_python: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(Workspace.default())
    proto = tmp_path / "tokenizer.model"
    proto.write_bytes(tokenizer.proto)
    rng = np.random.default_rng(0)
    ids = [2, *tokenizer.encode(CHAT.removeprefix("<bos>")), *rng.integers(3, 262144, 24).tolist()]
    assert len(ids) > 16  # beyond the tiny model's sliding window
    request = {
        "folder": str(tmp_path / "hf_f32"),
        "folder_bf16": str(tmp_path / "hf_bf16"),
        "tokenizer_model": str(proto),
        "ids": ids,
        "seed": 0,
        "out": str(tmp_path / "hf_tiny.npz"),
    }
    proc = start_oracle(oracle_python, "hf_tiny_oracle.py", tmp_path, request)
    theirs = finish_oracle(proc, tmp_path / "hf_tiny.npz", timeout=600)["logits"]
    for folder in ("hf_f32", "hf_bf16"):
        model = load_model(str(tmp_path / folder), dtype="float32")
        assert model.source.kind == "hf" and model.arch.name == "tiny"
        ours = keras_logits(model, ids)
        diff = float(np.abs(ours - theirs).max())
        print(f"\n{folder}: max |diff| {diff:.2e} (max |logit| {np.abs(theirs).max():.2f})")
        assert diff < 1e-4
        assert model.tokenizer.encode("<start_of_turn>user\n") == [105, 2364, 107]
