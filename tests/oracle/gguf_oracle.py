"""Oracle side of tests/pipeline/test_oracle.py: transformers' own GGUF loading (torch, CPU).

Run with the oracle interpreter (``.venv-oracle/bin/python``), never imported by the tests:

    gguf_oracle.py REQUEST.json

REQUEST: {"gguf": path, "strings": [str], "prompts": {name: [ids]}, "subset": [vocab ids],
          "last": int, "out": npz path}
OUT (npz): ``tok_{i}`` the tokenizer's ids of ``strings[i]`` (no special tokens added);
per prompt ``{name}_argmax`` [T], ``{name}_gap`` [T] (top-1 minus top-2 logit),
``{name}_subset`` [T, len(subset)] (logits of the subset ids), ``{name}_last`` [last, V]
(the full logits of the last positions), and ``{name}_logits`` [T, V] for prompts of at
most 64 tokens; ``info`` (JSON bytes: timings, config).
The tokenizer (~45 s) and the model (~90 s) are loaded once, in float32, eager attention.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    req = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    gguf = Path(req["gguf"])
    out: dict[str, np.ndarray] = {}
    info: dict = {}

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    info["tokenizer_s"] = time.perf_counter() - start
    info["tokenizer_class"] = type(tok).__name__
    for i, text in enumerate(req["strings"]):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out[f"tok_{i}"] = np.asarray(ids, dtype=np.int64)

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    info["model_s"] = time.perf_counter() - start
    info["config"] = {
        k: getattr(model.config, k, None)
        for k in ("sliding_window", "layer_types", "rope_parameters", "query_pre_attn_scalar")
    }

    subset = torch.as_tensor(req["subset"], dtype=torch.long)
    last = int(req["last"])
    start = time.perf_counter()
    for name, ids in req["prompts"].items():
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor([ids], dtype=torch.long)).logits[0].float()
        top2 = torch.topk(logits, 2, dim=-1).values
        out[f"{name}_argmax"] = logits.argmax(-1).numpy()
        out[f"{name}_gap"] = (top2[:, 0] - top2[:, 1]).numpy()
        out[f"{name}_subset"] = logits[:, subset].numpy()
        out[f"{name}_last"] = logits[-last:].numpy()
        if len(ids) <= 64:
            out[f"{name}_logits"] = logits.numpy()
    info["forward_s"] = time.perf_counter() - start

    out["info"] = np.frombuffer(json.dumps(info).encode("utf-8"), dtype=np.uint8)
    np.savez(req["out"], **out)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
