"""The Gemma 3 tokenizer, rebuilt from a GGUF file's vocabulary and cached as a SentencePiece proto.

Contract (docs/data-api.md)::

    load_tokenizer(workspace=None, *, on_event=...) -> GemmaTokenizer
    GemmaTokenizer.encode(text) -> list[int]            # no <bos> added: the template has it
    GemmaTokenizer.encode_batch(texts) -> list[list[int]]
    GemmaTokenizer.decode(ids) -> str
    GemmaTokenizer.encode_with_mask(formatted) -> (ids, loss_mask)
    GemmaTokenizer.vocab_size

Additions: ``load_tokenizer(..., gguf=path)`` (any local Gemma 3 ``.gguf``; default the embedded
270M file), ``GemmaTokenizer.encode_batch_with_mask``, ``GemmaTokenizer.token_spans(text)``
(the character span of each token), ``from_proto`` / ``from_file``, the special ids as
attributes, :func:`build_proto` (= :func:`proto_of` of :func:`read_vocab`) and
:func:`tokenizer_cache_path`.

No Google ``tokenizer.model`` can be downloaded on the build machines, so the SentencePiece
``ModelProto`` is rebuilt from the GGUF's ``tokenizer.ggml.{tokens,scores,token_type}``
(research/keras_gemma3_gguf.md §4; ids identical to HF transformers' GGUF-built tokenizer):
BPE, byte fallback, identity normalizer, no dummy prefix, whitespace escaped to ``▁``, extra
whitespace kept. llama.cpp's conversion is not a faithful SentencePiece model, so three
fixes are applied:

1. USER_DEFINED pieces: ``' '`` back to ``'▁'`` (llama.cpp "pre-normalizes" them; id 138 is
   stored ``'  '`` but must be ``'▁▁'``);
2. ``<unk>`` is CONTROL in the GGUF; SentencePiece needs it UNKNOWN (else ``unk_id()`` is -1);
3. ``<start_of_turn>`` / ``<end_of_turn>`` are CONTROL in the GGUF; SentencePiece never
   matches CONTROL pieces in text, and the chat template is tokenized from text, so they
   become USER_DEFINED (matched atomically, and decoded back to their text).

``<bos>`` stays CONTROL (it is the processor's bos id), so :meth:`GemmaTokenizer.encode`
splits the text on the literal ``"<bos>"`` and inserts id 2 itself; :meth:`decode` turns
id 2 back into ``"<bos>"``, so ``decode(encode(t)) == t`` for template text. The one
text that does not round-trip is a literal ``'▁'`` (U+2581): SentencePiece cannot tell it
from an escaped space and decodes it as ``' '`` (HF's Gemma tokenizer does the same).

The vocabulary is read with :func:`pipeline.models.gguf_weights.read_gguf` (0.3 s for the
embedded file; ``gguf.GGUFReader`` takes 10-15 s on its 262k pieces) and the proto (5 MB)
built in about 0.5 s more. It is cached under ``workspace.cache_dir/tokenizer/`` keyed by
the GGUF's identity (the published sha256 for the embedded file; resolved path, size and
mtime for any other) and :data:`FORMAT_VERSION`, written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import ModelSourceError
from pipeline.events import EventSink, LogLine, StageDone, ignore_event
from pipeline.utils.fileio import write_bytes_atomic
from pipeline.workspace import Workspace

if TYPE_CHECKING:
    import sentencepiece

    from pipeline.data.formatter import FormattedText

FORMAT_VERSION = 1
"""Bump when :func:`build_proto` changes: older cached protos are then ignored."""

CACHE_SUBDIR = "tokenizer"

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
START_OF_TURN_ID, END_OF_TURN_ID = 105, 106
BOS_TEXT = "<bos>"
TEXT_SPECIALS = frozenset({"<start_of_turn>", "<end_of_turn>"})
"""CONTROL pieces in the GGUF that must be matched inside text (made USER_DEFINED)."""

# SentencePiece's piece-type enum, which GGUF's token_type reuses.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_WS = "\u2581"  # '▁', SentencePiece's escaped space


# --------------------------------------------------------------------------- building


def _gguf_error(path: Path, what: str, exc: BaseException | None = None) -> ModelSourceError:
    detail = f": {exc}" if exc is not None else ""
    return ModelSourceError(
        f"Cannot read a Gemma 3 tokenizer from {path}: {what}{detail}",
        hint="Pass a Gemma 3 .gguf file (general.architecture = gemma3), or leave the model "
        "source empty to use the embedded Gemma 3 270M.",
    )


@dataclass(frozen=True)
class GGUFVocab:
    """What :func:`build_proto` takes from a GGUF: the vocabulary and the special ids."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    special_ids: dict[str, int]
    """``unknown``, ``bos``, ``eos``, ``padding`` -> id (Gemma's defaults where absent)."""
    add_space_prefix: bool


def read_vocab(gguf_path: str | Path) -> GGUFVocab:
    """The SentencePiece vocabulary of a Gemma 3 GGUF, read with
    :func:`pipeline.models.gguf_weights.read_gguf` (0.3 s for the embedded 270M file, where
    ``gguf.GGUFReader`` takes 10-15 s).

    Raises :class:`ModelSourceError` when the file is missing, not a GGUF, not Gemma 3
    (naming its architecture), or has no SentencePiece vocabulary.
    """
    from pipeline.models.gguf_weights import read_gguf

    path = Path(gguf_path)
    if not path.is_file():
        raise ModelSourceError(
            f"GGUF file not found: {path}", hint="Check the path, or use the embedded model."
        )
    try:
        meta = read_gguf(path).metadata
    except ModelSourceError as exc:  # bad magic, truncated or damaged header, unreadable
        raise _gguf_error(path, "not a readable GGUF file", exc) from exc
    arch = meta.get("general.architecture")
    if arch != "gemma3":
        raise _gguf_error(path, f"its architecture is {arch!r}, not 'gemma3'")
    tok_model = meta.get("tokenizer.ggml.model")
    if tok_model != "llama":
        raise _gguf_error(
            path, f"tokenizer.ggml.model is {tok_model!r}, not 'llama' (SentencePiece)"
        )

    def array(name: str, kind: type | tuple[type, ...], what: str) -> list[Any]:
        key = f"tokenizer.ggml.{name}"
        value = meta.get(key)
        if value is None:
            raise _gguf_error(path, f"missing key {key!r}")
        if not isinstance(value, list) or (value and not isinstance(value[0], kind)):
            raise _gguf_error(path, f"{key} is not an array of {what}")
        return value

    tokens: list[str] = array("tokens", str, "strings")
    scores: list[float] = array("scores", (float, int), "numbers")
    types: list[int] = array("token_type", int, "integers")
    try:
        # read_gguf keeps undecodable bytes as surrogates; SentencePiece needs UTF-8
        "".join(tokens).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _gguf_error(path, "a vocabulary piece is not valid UTF-8", exc) from exc
    if not (len(tokens) == len(scores) == len(types)):
        raise _gguf_error(path, "tokens, scores and token types differ in length")
    ids = {
        name: int(meta.get(f"tokenizer.ggml.{name}_token_id", default))
        for name, default in (
            ("unknown", UNK_ID),
            ("bos", BOS_ID),
            ("eos", EOS_ID),
            ("padding", PAD_ID),
        )
    }
    for name, i in ids.items():
        if not 0 <= i < len(tokens):
            raise _gguf_error(path, f"tokenizer.ggml.{name}_token_id {i} is not in the vocabulary")
    return GGUFVocab(
        tokens, scores, types, ids, bool(meta.get("tokenizer.ggml.add_space_prefix", False))
    )


def build_proto(gguf_path: str | Path) -> bytes:
    """Rebuild a serialized SentencePiece ``ModelProto`` from a Gemma 3 GGUF (~1.5 s for the
    embedded 270M file). Errors: see :func:`read_vocab`."""
    return proto_of(read_vocab(gguf_path))


def proto_of(vocab: GGUFVocab) -> bytes:
    """The serialized ``ModelProto`` of ``vocab``, with the three fixes of the module
    docstring."""
    from sentencepiece import sentencepiece_model_pb2

    pb: Any = sentencepiece_model_pb2  # generated protobuf module: no type information

    tokens, ids = vocab.tokens, vocab.special_ids
    model = pb.ModelProto()
    trainer = model.trainer_spec
    trainer.model_type = pb.TrainerSpec.BPE  # Gemma's SentencePiece model is BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = True
    trainer.unk_id, trainer.bos_id = ids["unknown"], ids["bos"]
    trainer.eos_id, trainer.pad_id = ids["eos"], ids["padding"]
    trainer.unk_piece, trainer.bos_piece = tokens[ids["unknown"]], tokens[ids["bos"]]
    trainer.eos_piece, trainer.pad_piece = tokens[ids["eos"]], tokens[ids["padding"]]
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = vocab.add_space_prefix  # False for Gemma 3
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    denorm = model.denormalizer_spec
    denorm.add_dummy_prefix = False
    denorm.remove_extra_whitespaces = False
    denorm.escape_whitespaces = True

    piece_type = pb.ModelProto.SentencePiece.Type
    type_map = {
        _NORMAL: piece_type.NORMAL,
        _UNKNOWN: piece_type.UNKNOWN,
        _CONTROL: piece_type.CONTROL,
        _USER_DEFINED: piece_type.USER_DEFINED,
        _UNUSED: piece_type.UNUSED,
        _BYTE: piece_type.BYTE,
    }
    unk = ids["unknown"]
    for i, (tok, score, ty) in enumerate(zip(tokens, vocab.scores, vocab.types, strict=True)):
        if ty == _USER_DEFINED:
            tok = tok.replace(" ", _WS)  # fix 1
        if i == unk:
            ty = _UNKNOWN  # fix 2
        elif tok in TEXT_SPECIALS:
            ty = _USER_DEFINED  # fix 3
        piece = model.pieces.add()
        piece.piece = tok
        piece.score = float(score)
        piece.type = type_map.get(int(ty), piece_type.NORMAL)
    return model.SerializeToString()


def _identity(gguf_path: Path, embedded: bool) -> str:
    if embedded:
        from pipeline.models.embedded import embedded_gguf_sha256

        return f"sha256:{embedded_gguf_sha256()}"
    st = gguf_path.stat()
    return f"file:{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def tokenizer_cache_path(workspace: Workspace, identity: str) -> Path:
    """Where the proto built from the GGUF with ``identity`` is cached."""
    key = hashlib.sha256(f"v{FORMAT_VERSION}|{identity}".encode()).hexdigest()[:20]
    return workspace.cache_dir / CACHE_SUBDIR / f"gemma3-{key}.spm"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def load_tokenizer(
    workspace: Workspace | None = None,
    *,
    gguf: str | Path | None = None,
    num_threads: int | None = None,
    on_event: EventSink = ignore_event,
) -> GemmaTokenizer:
    """Load the Gemma 3 tokenizer, building and caching its proto on first use.

    ``gguf``: a local Gemma 3 ``.gguf`` file; None means the embedded 270M model (assembled
    into the workspace cache on first use). ``num_threads`` is passed to SentencePiece's batch
    encoder (None: all cores).
    """
    ws = workspace or Workspace.default()
    start = time.perf_counter()
    if gguf is None:
        from pipeline.models.embedded import embedded_gguf_path

        path = embedded_gguf_path(ws, on_event=on_event)
        identity = _identity(path, embedded=True)
    else:
        path = Path(gguf).expanduser()
        if not path.is_file():
            raise ModelSourceError(
                f"GGUF file not found: {path}", hint="Check the path, or use the embedded model."
            )
        identity = _identity(path, embedded=False)
    cached = tokenizer_cache_path(ws, identity)
    if cached.is_file():
        proto = cached.read_bytes()
        try:
            tok = GemmaTokenizer(proto, num_threads=num_threads)
        except ModelSourceError:
            # A damaged cache file (e.g. disk trouble): rebuild rather than fail.
            on_event(LogLine(f"Ignoring unreadable tokenizer cache {cached}", "warning"))
        else:
            on_event(StageDone("tokenizer", f"loaded {cached.name}", time.perf_counter() - start))
            return tok
    on_event(LogLine(f"Building the tokenizer from {path.name} (once; about 1 s)"))
    proto = build_proto(path)
    tok = GemmaTokenizer(proto, num_threads=num_threads)
    _write_atomic(cached, proto)
    on_event(StageDone("tokenizer", f"built {cached.name}", time.perf_counter() - start))
    return tok


# --------------------------------------------------------------------------- using


class GemmaTokenizer:
    """A SentencePiece processor for Gemma 3 that understands the chat template's text.

    ``encode`` adds no ``<bos>``: the formatted text starts with the literal ``"<bos>"``,
    which becomes id 2. ``<start_of_turn>``/``<end_of_turn>`` in text become ids 105/106.
    Thread-safe for encoding (SentencePiece's encoder is).
    """

    bos_id = BOS_ID
    eos_id = EOS_ID
    pad_id = PAD_ID
    start_of_turn_id = START_OF_TURN_ID
    end_of_turn_id = END_OF_TURN_ID

    def __init__(self, proto: bytes, *, num_threads: int | None = None) -> None:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError) as exc:
            raise ModelSourceError(
                f"Not a valid SentencePiece model: {exc}",
                hint="Delete the tokenizer cache folder (workspace/cache/tokenizer) to rebuild it.",
            ) from exc
        if sp.bos_id() != BOS_ID or sp.PieceToId("<end_of_turn>") != END_OF_TURN_ID:
            raise ModelSourceError(
                "This SentencePiece model does not have Gemma 3's special ids "
                f"(bos={sp.bos_id()}, <end_of_turn>={sp.PieceToId('<end_of_turn>')}).",
                hint="Use a Gemma 3 tokenizer.",
            )
        self._sp: sentencepiece.SentencePieceProcessor = sp
        self.proto = proto
        """The serialized ModelProto (e.g. for ``keras_hub.models.Gemma3Tokenizer(proto=...)``)."""
        self.vocab_size: int = sp.GetPieceSize()
        self.num_threads: int = num_threads or os.cpu_count() or 1
        self._surface_bytes: np.ndarray | None = None

    @classmethod
    def from_file(cls, path: str | Path, *, num_threads: int | None = None) -> GemmaTokenizer:
        """Load a serialized SentencePiece model (``.spm`` / ``tokenizer.model``)."""
        return cls(Path(path).read_bytes(), num_threads=num_threads)

    # ---- encode / decode

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; each literal ``"<bos>"`` becomes id 2, nothing is added."""
        if BOS_TEXT not in text:
            return self._sp.EncodeAsIds(text)
        parts = text.split(BOS_TEXT)
        encoded = self._sp.EncodeAsIds(parts)
        return _join_bos(encoded)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` of many texts at once, on ``num_threads`` threads (SentencePiece's pool)."""
        if not texts:
            return []
        # Split every text on "<bos>" and encode all parts in one threaded call; the template
        # puts "<bos>" first, so most texts split into ["", rest].
        parts: list[str] = []
        counts: list[int] = []
        for text in texts:
            if BOS_TEXT in text:
                split = text.split(BOS_TEXT)
                parts.extend(split)
                counts.append(len(split))
            else:
                parts.append(text)
                counts.append(1)
        encoded: list[list[int]] = self._sp.Encode(parts, num_threads=self.num_threads)
        out: list[list[int]] = []
        pos = 0
        for n in counts:
            if n == 1:
                out.append(encoded[pos])
            else:
                out.append(_join_bos(encoded[pos : pos + n]))
            pos += n
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; the inverse of :meth:`encode` (id 2 -> ``"<bos>"``).

        Other CONTROL ids (``<eos>``, ``<pad>``) decode to nothing; ``<start_of_turn>`` and
        ``<end_of_turn>`` decode to their text (strip them from generated replies).
        """
        ids = [int(i) for i in ids]
        if BOS_ID not in ids:
            return self._sp.DecodeIds(ids)
        chunks: list[list[int]] = [[]]
        for i in ids:
            if i == BOS_ID:
                chunks.append([])
            else:
                chunks[-1].append(i)
        return BOS_TEXT.join(self._sp.DecodeIds(c) if c else "" for c in chunks)

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.IdToPiece(token_id)

    def piece_to_id(self, piece: str) -> int:
        return self._sp.PieceToId(piece)

    # ---- loss masks

    def encode_with_mask(self, formatted: FormattedText) -> tuple[list[int], list[bool]]:
        """Ids of ``formatted.text`` (equal to ``encode(text)``) and a loss mask.

        ``mask[i]`` is True when token i starts inside one of ``formatted.trained_spans``.
        In template text a token almost never straddles a span edge: the edges sit next to
        ``<end_of_turn>``, ``<bos>`` and the header's ``\\n``, pieces SentencePiece never merges
        with neighbours. The exception is a model turn whose text starts with a newline: the
        header's ``\\n`` and it become one ``\\n\\n`` token, which starts in the header and is
        left out of the loss.
        """
        ids = self.encode(formatted.text)
        return ids, self._mask(formatted, ids).tolist()

    def encode_batch_with_mask(
        self, formatted: Sequence[FormattedText]
    ) -> list[tuple[list[int], np.ndarray]]:
        """Batch form of :meth:`encode_with_mask`; masks are numpy bool arrays (cheaper)."""
        all_ids = self.encode_batch([f.text for f in formatted])
        return [(ids, self._mask(f, ids)) for f, ids in zip(formatted, all_ids, strict=True)]

    def token_spans(self, text: str, ids: list[int] | None = None) -> list[tuple[int, int]]:
        """``[start, end)`` character span in ``text`` of each token of ``encode(text)``
        (pass ``ids`` when they are already known, to encode ``text`` only once).

        The spans tile the text: the first starts at 0, each starts where the one before it
        ends, the last ends at ``len(text)``. A character that SentencePiece spells with
        byte-fallback pieces (``<0xF0>``, ``<0x9F>``, ...: one per UTF-8 byte) belongs to the
        piece of its first byte; the pieces of its other bytes get empty spans. A literal
        ``'▁'`` (U+2581) is placed exactly too, though it decodes as a space.
        """
        if ids is None:
            ids = self.encode(text)
        if not ids:
            return []
        starts = self._token_starts(text, ids)
        if text.isascii():
            bounds = starts.tolist()
            bounds.append(len(text))
        else:
            data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
            # chars[b]: characters that start before byte b (a byte inside a character
            # rounds up to the next character boundary).
            chars = np.zeros(data.size + 1, dtype=np.int64)
            np.cumsum((data & 0xC0) != 0x80, out=chars[1:])
            bounds = chars[starts].tolist()
            bounds.append(len(text))
        return [(bounds[i], bounds[i + 1]) for i in range(len(ids))]

    def _mask(self, formatted: FormattedText, ids: list[int]) -> np.ndarray:
        n = len(ids)
        mask = np.zeros(n, dtype=bool)
        spans = formatted.trained_spans
        if not spans or n == 0:
            return mask
        text = formatted.text
        starts = self._token_starts(text, ids)
        is_ascii = text.isascii()
        for a, b in spans:
            if not is_ascii:  # spans are in characters, offsets in UTF-8 bytes
                a, b = len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8"))
            lo, hi = np.searchsorted(starts, (a, b), side="left")
            mask[lo:hi] = True
        return mask

    def _token_starts(self, text: str, ids: list[int]) -> np.ndarray:
        """Start byte offset of each token in ``text`` (UTF-8)."""
        table = self._surface_table()
        arr = np.asarray(ids, dtype=np.int64)
        lengths = table[arr]
        ends = np.cumsum(lengths)
        if ends.size and int(ends[-1]) == len(text.encode("utf-8")):
            return ends - lengths
        # The piece lengths do not add up: the text holds a literal '▁' (U+2581), which
        # SentencePiece cannot tell from an escaped space. Ask it for real offsets instead.
        return self._token_starts_slow(text)

    def _token_starts_slow(self, text: str) -> np.ndarray:
        starts: list[int] = []
        offset = 0
        parts = text.split(BOS_TEXT)
        for k, part in enumerate(parts):
            if k:
                starts.append(offset)  # the <bos> we insert
                offset += len(BOS_TEXT)
            if part:
                proto = self._sp.Encode(part, return_type="proto")
                run_begin, k = -1, 0
                for piece in proto.pieces:  # begin: UTF-8 bytes
                    if self._sp.IsByte(piece.id):
                        # The byte pieces of one character all have its begin: count them.
                        k = k + 1 if piece.begin == run_begin else 0
                        run_begin = piece.begin
                        starts.append(offset + piece.begin + k)
                    else:
                        run_begin = -1
                        starts.append(offset + piece.begin)
            offset += len(part.encode("utf-8"))
        return np.asarray(starts, dtype=np.int64)

    def _surface_table(self) -> np.ndarray:
        """Bytes of input text each id stands for (built once, ~0.3 s for 262k pieces)."""
        table = self._surface_bytes
        if table is None:
            sp = self._sp
            table = np.empty(self.vocab_size, dtype=np.int64)
            for i in range(self.vocab_size):
                if sp.IsByte(i):
                    table[i] = 1
                elif sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i):
                    table[i] = 0
                else:
                    table[i] = len(sp.IdToPiece(i).replace(_WS, " ").encode("utf-8"))
            table[BOS_ID] = len(BOS_TEXT)  # we map the literal "<bos>" to it
            self._surface_bytes = table
        return table


def _join_bos(encoded: Sequence[list[int]]) -> list[int]:
    """Join the encodings of the parts of a text split on "<bos>", with id 2 between them."""
    out: list[int] = list(encoded[0])
    for part in encoded[1:]:
        out.append(BOS_ID)
        out.extend(part)
    return out
