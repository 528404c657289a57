"""The Gemma 3 tokenizer rebuilt from GGUF: ids, round trips, loss masks, cache, errors.

The tests marked with the ``tokenizer`` fixture use the real embedded 270M GGUF through the
default workspace: the first run builds the proto (~1 s), later runs load the cache (<0.1 s).
The build logic itself is also tested on a tiny synthetic Gemma 3 GGUF (fast).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2

from pipeline.data.formatter import FormattedText, format_conversation, format_prompt
from pipeline.data.types import Conversation, Turn
from pipeline.errors import ModelSourceError
from pipeline.models import tokenizer as tokmod
from pipeline.models.tokenizer import GemmaTokenizer, build_proto, load_tokenizer
from pipeline.workspace import Workspace

pb: Any = sentencepiece_model_pb2  # generated protobuf module: no type information

CHAT_PROMPT = (
    "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
)
# fmt: off
CHAT_PROMPT_IDS = [
    2, 105, 2364, 107, 3689, 563, 506, 5279, 529, 7001, 236881, 106, 107, 105, 4368, 107,
]
# fmt: on


@pytest.fixture(scope="session")
def tokenizer() -> GemmaTokenizer:
    return load_tokenizer()


def shared_conversations(folder: Path) -> list[Conversation]:
    """Every valid conversation of the three shared datasets, through the real reader."""
    from pipeline.data.validate import iter_checked

    names = ("alpaca_en_demo.json", "identity.json", "glaive_toolcall_en_demo.json")
    return [
        checked.conversation
        for name in names
        for checked in iter_checked(folder / name)
        if checked.conversation is not None
    ]


# --------------------------------------------------------------------------- real vocabulary


def test_chat_prompt_ids_match_the_measured_ids(tokenizer: GemmaTokenizer) -> None:
    conv = Conversation((Turn("user", "What is the capital of France?"),))
    assert format_prompt(conv) == CHAT_PROMPT
    assert tokenizer.encode(CHAT_PROMPT) == CHAT_PROMPT_IDS
    assert tokenizer.encode_batch([CHAT_PROMPT, "x"])[0] == CHAT_PROMPT_IDS


def test_special_ids(tokenizer: GemmaTokenizer) -> None:
    assert tokenizer.vocab_size == 262_144
    assert [tokenizer.piece_to_id(p) for p in ("<pad>", "<eos>", "<bos>", "<unk>")] == [0, 1, 2, 3]
    assert tokenizer.encode("<start_of_turn><end_of_turn>") == [105, 106]
    assert tokenizer.encode("<bos>") == [2]
    a, b = tokenizer.encode("a"), tokenizer.encode("b")
    assert tokenizer.encode("a<bos>b<bos>") == [*a, 2, *b, 2]
    assert tokenizer.id_to_piece(138) == "▁▁"  # fix 1: user-defined spaces


TEXTS = [
    "日本語のテキストと中文和한국어",
    "emoji 👍🏽 🇫🇷 👨‍👩‍👧 done",
    "tabs\tand\t\ttabs\n\n\nnewlines",
    "runs   of    spaces     ",
    "   leading and trailing   ",
    "café naïve Ελληνικά кириллица हिन्दी العربية 𝔘𝔫𝔦",
    "zero\u200bwidth",
    "def f(x):\n    return x  # comment\n\n\n",
    "1234567890 3.14159",
    CHAT_PROMPT + "The capital is Paris.<end_of_turn>\n",
    "<bos><bos> double bos",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tokenizer: GemmaTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode_batch([text]) == [ids]


def test_literal_lower_block_decodes_as_space(tokenizer: GemmaTokenizer) -> None:
    # SentencePiece escapes spaces as U+2581 and cannot tell a literal one from a space:
    # the only text that does not round-trip (HF's Gemma tokenizer does the same).
    assert tokenizer.decode(tokenizer.encode("a ▁ b")) == "a   b"


def test_eos_and_pad_decode_to_nothing(tokenizer: GemmaTokenizer) -> None:
    assert tokenizer.decode([*tokenizer.encode("hi"), 1, 0]) == "hi"


def test_encode_with_mask_equals_encode_on_shared_datasets(
    tokenizer: GemmaTokenizer, shared_datasets: Path
) -> None:
    convs = shared_conversations(shared_datasets)
    assert len(convs) == 999 + 91 + 300
    formatted = [format_conversation(c) for c in convs]
    batch = tokenizer.encode_batch_with_mask(formatted)
    for f, (ids_b, mask_b) in zip(formatted, batch, strict=True):
        ids, mask = tokenizer.encode_with_mask(f)
        assert ids == tokenizer.encode(f.text) == ids_b
        assert mask == mask_b.tolist()
        _check_mask_by_turn(ids, mask)
    # train_on_prompt: everything but <bos> is trained.
    for c in convs[:50]:
        ids, mask = tokenizer.encode_with_mask(format_conversation(c, train_on_prompt=True))
        assert ids[0] == 2 and mask[0] is False and all(mask[1:])


def _check_mask_by_turn(ids: list[int], mask: list[bool]) -> None:
    """Walk the ids turn by turn: user turns and headers are out, model bodies and their
    <end_of_turn> are in, the "\\n" after <end_of_turn> is out."""
    user_id, model_id, nl_id = 2364, 4368, 107
    assert ids[0] == 2 and not mask[0]
    i, n, model_turns = 1, len(ids), 0
    while i < n:
        assert ids[i] == 105, f"turn should start at {i}"
        assert ids[i + 2] == nl_id and not any(mask[i : i + 3])
        side = ids[i + 1]
        assert side in (user_id, model_id)
        end = ids.index(106, i + 3)
        body = mask[i + 3 : end + 1]  # body tokens and <end_of_turn>
        if side == model_id:
            model_turns += 1
            assert all(body) and mask[end]
        else:
            assert not any(body)
        assert ids[end + 1] == nl_id and not mask[end + 1]
        i = end + 2
    assert model_turns >= 1


def test_mask_handles_literal_lower_block_and_non_ascii(tokenizer: GemmaTokenizer) -> None:
    conv = Conversation((Turn("user", "▁ 日本 ▁▁"), Turn("model", "答え ▁ 👍🏽  ")))
    f = format_conversation(conv)
    ids, mask = tokenizer.encode_with_mask(f)
    assert ids == tokenizer.encode(f.text)
    _check_mask_by_turn(ids, mask)
    trained = [t for t, m in zip(ids, mask, strict=True) if m]
    assert tokenizer.decode(trained) == "答え   👍🏽  <end_of_turn>"  # '▁' decodes as ' '
    assert sum(mask) == len(tokenizer.encode("答え ▁ 👍🏽  <end_of_turn>"))


def _is_byte(tokenizer: GemmaTokenizer, token_id: int) -> bool:
    return re.fullmatch(r"<0x[0-9A-F]{2}>", tokenizer.id_to_piece(token_id)) is not None


def _check_spans(tokenizer: GemmaTokenizer, text: str) -> list[tuple[int, int]]:
    """token_spans tiles ``text``; each span re-encodes to its token, and the byte-fallback
    pieces of a character (the first holds it, the others are empty) to those pieces."""
    ids = tokenizer.encode(text)
    spans = tokenizer.token_spans(text)
    assert len(spans) == len(ids)
    ends = [0, *(end for _, end in spans)]
    assert [start for start, _ in spans] == ends[:-1]  # each starts where the last ended
    assert ends[-1] == len(text)
    i = 0
    while i < len(ids):
        start, end = spans[i]
        if _is_byte(tokenizer, ids[i]):
            j = i + 1
            while j < len(ids) and _is_byte(tokenizer, ids[j]) and spans[j][0] == spans[j][1]:
                j += 1
            assert end - start == 1  # one character, spelled by pieces i .. j-1
            assert tokenizer.encode(text[start:end]) == ids[i:j]
            i = j
        else:
            assert end > start, (i, tokenizer.id_to_piece(ids[i]))
            assert tokenizer.encode(text[start:end]) == [ids[i]], text[start:end]
            i += 1
    return spans


@pytest.mark.parametrize(
    "text", [*TEXTS, "byte fallback: 🦩𐍈 ꙮ 𝔘𝔫𝔦", "literal ▁ and 🦩 ▁▁ <bos>x▁"]
)
def test_token_spans_tile_the_text_and_re_encode(tokenizer: GemmaTokenizer, text: str) -> None:
    _check_spans(tokenizer, text)


def test_token_spans_of_a_formatted_conversation(tokenizer: GemmaTokenizer) -> None:
    conv = Conversation((Turn("user", "Qu'est-ce que 🦩 ?"), Turn("model", "Un flamant ▁ rose.")))
    f = format_conversation(conv)
    spans = _check_spans(tokenizer, f.text)
    pieces = [f.text[start:end] for start, end in spans]
    assert pieces[:2] == ["<bos>", "<start_of_turn>"]
    assert pieces[-2:] == ["<end_of_turn>", "\n"]
    # Byte fallback: 🦩 is four pieces; the first holds the character.
    flamingo = f.text.index("🦩")
    held = [n for n, span in enumerate(spans) if span == (flamingo, flamingo + 1)]
    assert len(held) == 1
    assert spans[held[0] + 1 : held[0] + 4] == [(flamingo + 1, flamingo + 1)] * 3


def test_cached_load_is_fast(tokenizer: GemmaTokenizer) -> None:
    import time

    start = time.perf_counter()
    again = load_tokenizer()
    assert time.perf_counter() - start < 5
    assert again.encode(CHAT_PROMPT) == CHAT_PROMPT_IDS


# --------------------------------------------------------------------------- tiny synthetic GGUF


def write_tiny_gguf(path: Path, arch: str = "gemma3") -> Path:
    """A Gemma-3-shaped vocabulary of 369 pieces, stored the way llama.cpp stores Gemma's."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tokenizer_model("llama")
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<unused{i}>" for i in range(101)]
    tokens += ["<start_of_turn>", "<end_of_turn>", "\n", "  "]
    types = [3] * 107 + [4, 4]  # all CONTROL as in the GGUF, then user-defined "\n", "  "
    tokens += [f"<0x{i:02X}>" for i in range(256)]
    types += [6] * 256
    tokens += ["▁", "a", "b", "ab"]
    types += [1] * 4
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores([0.0] * (len(tokens) - 1) + [1.0])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_space_prefix(False)
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_build_proto_applies_the_three_fixes(tmp_path: Path) -> None:
    proto = pb.ModelProto()
    proto.ParseFromString(build_proto(write_tiny_gguf(tmp_path / "tiny.gguf")))
    kind = pb.ModelProto.SentencePiece
    assert proto.trainer_spec.model_type == pb.TrainerSpec.BPE
    assert proto.trainer_spec.byte_fallback
    assert proto.normalizer_spec.name == "identity"
    assert not proto.normalizer_spec.add_dummy_prefix
    assert proto.normalizer_spec.escape_whitespaces
    assert not proto.normalizer_spec.remove_extra_whitespaces
    assert proto.pieces[108].piece == "▁▁" and proto.pieces[108].type == kind.USER_DEFINED
    assert proto.pieces[3].type == kind.UNKNOWN
    assert proto.pieces[105].type == proto.pieces[106].type == kind.USER_DEFINED
    assert proto.pieces[2].type == kind.CONTROL  # <bos> stays CONTROL
    tok = GemmaTokenizer(proto.SerializeToString())
    text = "<bos><start_of_turn>user\nab  a<end_of_turn>\n"
    ids = tok.encode(text)
    assert ids[:2] == [2, 105] and ids[-2:] == [106, 107]
    assert 108 in ids  # "  " -> '▁▁'
    assert tok.decode(ids) == text


def test_load_tokenizer_caches_by_gguf_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace(tmp_path / "ws")
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    events: list[object] = []
    first = load_tokenizer(ws, gguf=path, on_event=events.append)
    cached = list((ws.cache_dir / "tokenizer").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".spm"  # no temporary left behind

    def no_build(_: object) -> bytes:
        raise AssertionError("should load from the cache")

    monkeypatch.setattr(tokmod, "build_proto", no_build)
    second = load_tokenizer(ws, gguf=path)
    assert second.encode("ab") == first.encode("ab")
    assert events  # LogLine + StageDone

    # A damaged cache file is rebuilt, not fatal.
    monkeypatch.undo()
    cached[0].write_bytes(b"not a proto")
    third = load_tokenizer(ws, gguf=path)
    assert third.encode("ab") == first.encode("ab")


def test_non_gemma_gguf_names_its_architecture(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "llama.gguf", arch="llama")
    with pytest.raises(ModelSourceError, match="'llama'"):
        load_tokenizer(Workspace(tmp_path / "ws"), gguf=path)


def test_missing_or_garbage_gguf(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(ModelSourceError, match="not found"):
        load_tokenizer(ws, gguf=tmp_path / "nope.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ModelSourceError, match="not a readable GGUF"):
        load_tokenizer(ws, gguf=junk)


def test_formatted_text_without_spans_masks_nothing(tmp_path: Path) -> None:
    tok = GemmaTokenizer(build_proto(write_tiny_gguf(tmp_path / "tiny.gguf")))
    ids, mask = tok.encode_with_mask(FormattedText("<bos>ab", ()))
    assert ids == [2, 368] and mask == [False, False]


def test_token_spans_on_a_tiny_vocabulary(tmp_path: Path) -> None:
    tok = GemmaTokenizer(build_proto(write_tiny_gguf(tmp_path / "tiny.gguf")))
    text = "<bos>ab é"  # é is not in the vocabulary: two byte pieces
    assert [tok.id_to_piece(i) for i in tok.encode(text)] == [
        "<bos>",
        "ab",
        "▁",
        "<0xC3>",
        "<0xA9>",
    ]
    assert tok.token_spans(text) == [(0, 5), (5, 7), (7, 8), (8, 9), (9, 9)]
    assert tok.token_spans("") == []


# --------------------------------------------------------------------------- the fast reader

EMBEDDED_PROTO_SHA256 = "ba19e78c06d7182a798d9e842d3a2c0294dd3392d80849403a6ec72a77a48dab"
"""sha256 of the proto that build_proto made from the embedded GGUF when it read the file
with gguf.GGUFReader (FORMAT_VERSION 1): the fast reader must give the same bytes, so the
protos cached by older versions stay valid."""


def reference_vocab(path: Path) -> tokmod.GGUFVocab:
    """The vocabulary read with gguf.GGUFReader, as build_proto read it before read_gguf."""
    fields = gguf.GGUFReader(path).fields

    def scalar(key: str, default: Any = None) -> Any:
        field = fields.get(key)
        return default if field is None else field.contents()

    ids = {
        name: scalar(f"tokenizer.ggml.{name}_token_id", default)
        for name, default in (("unknown", 3), ("bos", 2), ("eos", 1), ("padding", 0))
    }
    return tokmod.GGUFVocab(
        fields["tokenizer.ggml.tokens"].contents(),
        fields["tokenizer.ggml.scores"].contents(),
        fields["tokenizer.ggml.token_type"].contents(),
        ids,
        bool(scalar("tokenizer.ggml.add_space_prefix", False)),
    )


def assert_same_proto(new: bytes, old: bytes) -> None:
    if new == old:
        return
    a, b = pb.ModelProto(), pb.ModelProto()
    a.ParseFromString(new)
    b.ParseFromString(old)
    assert len(a.pieces) == len(b.pieces)
    for i, (x, y) in enumerate(zip(a.pieces, b.pieces, strict=True)):
        assert (x.piece, x.score, x.type) == (y.piece, y.score, y.type), i
    assert a.trainer_spec == b.trainer_spec and a.normalizer_spec == b.normalizer_spec
    raise AssertionError("the pieces are equal but the bytes differ: bump FORMAT_VERSION")


def test_read_vocab_equals_the_gguf_reader(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    vocab, want = tokmod.read_vocab(path), reference_vocab(path)
    assert vocab == want
    assert_same_proto(build_proto(path), tokmod.proto_of(want))


def test_embedded_proto_is_unchanged(tokenizer: GemmaTokenizer) -> None:
    import hashlib
    import time

    from pipeline.models.embedded import embedded_gguf_path

    path = embedded_gguf_path(Workspace.default())  # assembled by the tokenizer fixture
    start = time.perf_counter()
    proto = build_proto(path)
    assert time.perf_counter() - start < 10  # 0.6 s measured; GGUFReader took 15 s
    assert hashlib.sha256(proto).hexdigest() == EMBEDDED_PROTO_SHA256
    assert tokmod.FORMAT_VERSION == 1
    assert proto == tokenizer.proto  # what the cache holds, whichever version built it


@pytest.mark.slow
def test_embedded_proto_equals_the_gguf_reader_build() -> None:
    from pipeline.models.embedded import embedded_gguf_path

    path = embedded_gguf_path(Workspace.default())
    vocab = tokmod.read_vocab(path)
    want = reference_vocab(path)  # 10-15 s
    assert vocab.special_ids == want.special_ids == {"unknown": 3, "bos": 2, "eos": 1, "padding": 0}
    assert vocab.tokens == want.tokens and vocab.types == want.types
    assert vocab.scores == want.scores
    assert_same_proto(tokmod.proto_of(vocab), tokmod.proto_of(want))


def write_gguf(path: Path, tokens: list[Any] | None, bos: int = 2) -> Path:
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_tokenizer_model("llama")
    if tokens is not None:
        writer.add_token_list(tokens)
        writer.add_token_types([1] * len(tokens))
        writer.add_token_scores([0.0] * len(tokens))
    writer.add_bos_token_id(bos)
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_bad_vocabularies_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"missing key 'tokenizer\.ggml\.tokens'"):
        build_proto(write_gguf(tmp_path / "none.gguf", None))
    with pytest.raises(ModelSourceError, match="not valid UTF-8"):
        build_proto(write_gguf(tmp_path / "utf8.gguf", ["<pad>", "<eos>", b"\xff\xfe", "<unk>"]))
    with pytest.raises(ModelSourceError, match="bos_token_id 9 is not in the vocabulary"):
        build_proto(write_gguf(tmp_path / "ids.gguf", ["<pad>", "<eos>", "<bos>", "<unk>"], 9))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()[:3000])
    with pytest.raises(ModelSourceError, match="not a readable GGUF"):
        build_proto(cut)
