"""Exact and near-duplicate removal, keeping the first occurrence.

Contract (docs/data-api.md)::

    dedup_dataset(source, output, *, spec, near_threshold=0.9, removed=None,
                  on_event, should_stop) -> DedupResult

Additions: ``num_perm``, ``shingle_size``, ``seed``, ``to`` (output format); the in-memory
:class:`Deduplicator` and :func:`dedup_conversations`. :func:`refuse_inputs`,
:func:`row_serializer` and :func:`ref_dict` live in :mod:`pipeline.data.job_outputs` (shared
with convert and split) and are re-exported here.

Rules, applied to each valid conversation in input order (invalid rows are skipped and
counted; ``convert`` lists them):

1. **exact**: the whole conversation (roles, every turn's text, tool definitions) after
   ``casefold()`` and collapsing every whitespace run to one space, hashed to 64 bits
   (BLAKE2b). A row whose hash was seen before duplicates that earlier row. (A false match
   between different rows needs a 64-bit collision: ~3e-8 for a million rows.)
2. **near** (``near_threshold`` not None): a datasketch ``MinHash`` (``num_perm``
   permutations, seeded, so runs are reproducible) of the row's ``shingle_size``-word
   shingles of the same normalised text, queried in a ``MinHashLSH`` of the kept rows. LSH
   only proposes candidates; a row is removed when the best candidate's estimated Jaccard
   similarity is at least ``near_threshold``, and that estimate is reported.

Only kept rows enter the indexes, so every removed row points at a row that is in the output.

Outputs: the kept rows as ShareGPT (or ChatML) JSONL via the converter's
``conversation_to_sharegpt``, and the removed file (default ``<output stem>.removed.jsonl``),
one JSON object per removed row::

    {"source": {"path", "line", "index"}, "duplicate_of": {"path", "line", "index"},
     "rule": "exact" | "near", "jaccard": 1.0 | <estimate>, "row": <the row, ShareGPT>}

Both are written to temporary names in their folders and renamed only when the job finishes;
a cancelled or failed job leaves no output. Writing over an input file is refused.

Memory (measured with tracemalloc, num_perm=128, rows of ~80 words):

* exact: ~27 bytes per row (64-bit hash + row number in sorted numpy arrays, plus a dict of
  at most 65,536 recent hashes; ~73 bytes per row at the peak of a merge), plus 20 bytes per
  row for the ``source`` references of the removed file: ~50 MB for a million rows;
* near adds, per kept row, its signature (4 bytes x num_perm = 512 B) and datasketch's LSH
  tables (a bytes key and a set per band, plus its key index): 3.8 KB per kept row in all
  at threshold 0.9 (5 bands of 25), 5.5 KB at 0.7 (14 bands of 9). A million distinct rows
  need ~4 GB; use ``near_threshold=None`` (exact only) for very large sets.

Speed on one core, rows of ~80 words, not counting reading and validation: ~12,000 rows/s
with near duplicates (shingle hashing and LSH), ~200,000 rows/s exact only.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from pipeline.data.job_outputs import OutputFormat, ref_dict, refuse_inputs, row_serializer
from pipeline.data.types import Conversation, DatasetSpec, RecordRef
from pipeline.errors import DatasetError
from pipeline.events import EventSink, StageDone, StopCheck, ignore_event, never_stop

STAGE = "dedup"
Rule = Literal["exact", "near"]


# --------------------------------------------------------------------------- core (in memory)


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Row ``index`` duplicates the earlier, kept row ``of`` (0-based positions in the stream
    of conversations given to the :class:`Deduplicator`)."""

    index: int
    of: int
    rule: Rule
    jaccard: float
    """1.0 for exact duplicates; the MinHash estimate for near duplicates."""


def normalized_words(conv: Conversation) -> list[str]:
    """The conversation as one word list: a role marker, then the casefolded words of each
    turn (tools first). Whitespace runs vanish in ``split()``, which is the collapse."""
    words: list[str] = []
    if conv.tools:
        words.append("\x1etools")
        words.extend(conv.tools.casefold().split())
    for turn in conv.turns:
        words.append("\x1e" + turn.role)
        words.extend(turn.text.casefold().split())
    return words


def exact_hash(words: list[str]) -> int:
    """64-bit hash of a normalized word list."""
    data = " ".join(words).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


# Odd 32-bit multipliers that make a shingle's hash depend on word order.
_SHINGLE_MULTIPLIERS = np.array(
    [
        0x9E3779B1,
        0x85EBCA77,
        0xC2B2AE3D,
        0x27D4EB2F,
        0x165667B1,
        0xD3A2646C | 1,
        0xFD7046C5,
        0xB55A4F09,
    ],
    dtype=np.uint64,
)


def shingle_hashes(words: list[str], size: int) -> list[int]:
    """32-bit hashes of the ``size``-word shingles of ``words`` (one shingle when shorter).

    Each word is hashed once (CRC-32, deterministic across runs, unlike ``hash()``) and the
    shingle hashes are combined in numpy: building every shingle's string costs 3x more.
    """
    if not words:
        return [0]
    hashed = np.fromiter(
        (zlib.crc32(w.encode("utf-8", "surrogatepass")) for w in words),
        dtype=np.uint64,
        count=len(words),
    )
    k = min(size, len(words))
    n = len(words) - k + 1
    combined = np.zeros(n, dtype=np.uint64)
    for j in range(k):
        mult = _SHINGLE_MULTIPLIERS[j % len(_SHINGLE_MULTIPLIERS)]
        combined = (combined * np.uint64(31) + hashed[j : j + n] * mult) & np.uint64(0xFFFFFFFF)
    return combined.tolist()


def _identity(value: int) -> int:
    return value


class _HashIndex:
    """64-bit hash -> first row number, in ~16 bytes per entry.

    A Python dict costs ~100 bytes per entry; this keeps sorted numpy arrays and a small dict
    of recent entries, merged into the arrays every ``merge_every`` additions.
    """

    def __init__(self, merge_every: int = 65_536) -> None:
        self._keys = np.zeros(0, dtype=np.uint64)
        self._values = np.zeros(0, dtype=np.int64)
        self._recent: dict[int, int] = {}
        self._merge_every = merge_every

    def __len__(self) -> int:
        return int(self._keys.size) + len(self._recent)

    def get(self, key: int) -> int | None:
        hit = self._recent.get(key)
        if hit is not None:
            return hit
        keys = self._keys
        if keys.size:
            k = np.uint64(key)
            i = int(np.searchsorted(keys, k))
            if i < keys.size and keys[i] == k:
                return int(self._values[i])
        return None

    def add(self, key: int, value: int) -> None:
        self._recent[key] = value
        if len(self._recent) >= self._merge_every:
            self._merge()

    def _merge(self) -> None:
        new_keys = np.fromiter(self._recent.keys(), dtype=np.uint64, count=len(self._recent))
        new_values = np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))
        keys = np.concatenate([self._keys, new_keys])
        values = np.concatenate([self._values, new_values])
        order = np.argsort(keys, kind="stable")
        self._keys, self._values = keys[order], values[order]
        self._recent.clear()


class _Signatures:
    """Kept rows' MinHash values in 4,096-row blocks (no per-row Python object)."""

    _BLOCK = 4096

    def __init__(self, num_perm: int, dtype: Any) -> None:
        self._num_perm = num_perm
        self._dtype = dtype
        self._blocks: list[np.ndarray] = []
        self._n = 0

    def append(self, values: np.ndarray) -> int:
        row = self._n % self._BLOCK
        if row == 0:
            self._blocks.append(np.empty((self._BLOCK, self._num_perm), dtype=self._dtype))
        self._blocks[-1][row] = values
        self._n += 1
        return self._n - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self._blocks[i // self._BLOCK][i % self._BLOCK]


class Deduplicator:
    """Streaming duplicate finder: call :meth:`check` on each conversation in order."""

    def __init__(
        self,
        *,
        near_threshold: float | None = 0.9,
        num_perm: int = 128,
        shingle_size: int = 3,
        seed: int = 1,
    ) -> None:
        if near_threshold is not None and not 0.0 < near_threshold <= 1.0:
            raise DatasetError(
                f"near_threshold must be in (0, 1], got {near_threshold}",
                hint="0.9 is a good default; None turns near-duplicate removal off.",
            )
        if num_perm < 16 or shingle_size < 1:
            raise DatasetError(
                f"num_perm must be >= 16 and shingle_size >= 1 (got {num_perm}, {shingle_size})"
            )
        self.near_threshold = near_threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        self.seen = 0
        self.exact_removed = 0
        self.near_removed = 0
        self._exact = _HashIndex()
        if near_threshold is not None:
            from datasketch import MinHash, MinHashLSH

            # Permutations are drawn once from the seed and shared by every MinHash (drawing
            # them per row would cost more than hashing the row).
            proto = MinHash(num_perm=num_perm, seed=seed, scheme="affine32")
            self._minhash_args: dict[str, Any] = {
                "num_perm": num_perm,
                "seed": seed,
                "scheme": "affine32",
                "hashfunc": _identity,  # shingle_hashes() already hashed them
                "permutations": proto.permutations,
            }
            self._minhash_cls = MinHash
            try:
                self._lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)
            except ValueError as exc:  # e.g. "The number of bands are too small (b < 2)"
                raise DatasetError(
                    f"near_threshold {near_threshold} does not work with num_perm {num_perm}: "
                    f"{exc}",
                    hint="Lower near_threshold (0.9 is a good default) or raise num_perm.",
                ) from exc
            self._signatures = _Signatures(num_perm, proto.hashvalues.dtype)
            self._kept_rows = array("q")  # signature slot -> row number

    def check(self, conv: Conversation) -> Duplicate | None:
        """Classify the next conversation; None means keep it (it enters the indexes)."""
        index = self.seen
        self.seen += 1
        words = normalized_words(conv)
        key = exact_hash(words)
        first = self._exact.get(key)
        if first is not None:
            self.exact_removed += 1
            return Duplicate(index, first, "exact", 1.0)
        if self.near_threshold is not None:
            minhash = self._minhash_cls(**self._minhash_args)
            minhash.update_batch(shingle_hashes(words, self.shingle_size))
            values = minhash.hashvalues
            best, best_j = -1, -1.0
            for candidate in self._lsh.query(minhash):
                slot = cast(int, candidate)  # we insert int keys
                j = float(np.count_nonzero(self._signatures[slot] == values)) / self.num_perm
                if j > best_j:
                    best, best_j = slot, j
            if best >= 0 and best_j >= self.near_threshold:
                self.near_removed += 1
                return Duplicate(index, int(self._kept_rows[best]), "near", best_j)
            new_slot = self._signatures.append(values)
            self._kept_rows.append(index)
            self._lsh.insert(new_slot, minhash, check_duplication=False)
        self._exact.add(key, index)
        return None


def dedup_conversations(
    conversations: Iterable[Conversation],
    *,
    near_threshold: float | None = 0.9,
    num_perm: int = 128,
    shingle_size: int = 3,
    seed: int = 1,
) -> tuple[list[Conversation], list[Duplicate]]:
    """(kept conversations, duplicates) of an in-memory list."""
    dedup = Deduplicator(
        near_threshold=near_threshold, num_perm=num_perm, shingle_size=shingle_size, seed=seed
    )
    kept: list[Conversation] = []
    removed: list[Duplicate] = []
    for conv in conversations:
        dup = dedup.check(conv)
        if dup is None:
            kept.append(conv)
        else:
            removed.append(dup)
    return kept, removed


# --------------------------------------------------------------------------- file outputs


class _Refs:
    """RecordRef of every valid row, by row number, in 20 bytes per row (not 100+)."""

    def __init__(self) -> None:
        self._path_ids: dict[str, int] = {}
        self._paths: list[str] = []
        self._path = array("i")
        self._line = array("q")
        self._index = array("q")

    def append(self, ref: RecordRef) -> None:
        pid = self._path_ids.get(ref.path)
        if pid is None:
            pid = self._path_ids[ref.path] = len(self._paths)
            self._paths.append(ref.path)
        self._path.append(pid)
        self._line.append(-1 if ref.line is None else ref.line)
        self._index.append(ref.index)

    def __getitem__(self, row: int) -> RecordRef:
        line = self._line[row]
        return RecordRef(self._paths[self._path[row]], self._index[row], None if line < 0 else line)


@dataclass(frozen=True, slots=True)
class DedupResult:
    output: Path
    removed: Path
    total: int
    """Valid rows read."""
    kept: int
    exact_removed: int
    near_removed: int
    invalid: int
    """Invalid rows skipped (not in either output)."""
    near_threshold: float | None
    num_perm: int
    seconds: float

    @property
    def removed_count(self) -> int:
        return self.exact_removed + self.near_removed


def default_removed_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.removed.jsonl")


def dedup_dataset(
    source: Any,
    output: Path,
    *,
    spec: DatasetSpec | None = None,
    near_threshold: float | None = 0.9,
    removed: Path | None = None,
    num_perm: int = 128,
    shingle_size: int = 3,
    seed: int = 1,
    to: OutputFormat = "sharegpt",
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> DedupResult:
    """Remove exact then near duplicates from the valid rows of ``source``; see the module
    docstring for the rules and the files written."""
    from pipeline.data.jsonio import AtomicJsonlWriter
    from pipeline.data.validate import CheckedStream

    start = time.perf_counter()
    output = Path(output)
    removed_path = Path(removed) if removed is not None else default_removed_path(output)
    serialize = row_serializer(to)
    to_sharegpt = row_serializer("sharegpt")
    dedup = Deduplicator(
        near_threshold=near_threshold, num_perm=num_perm, shingle_size=shingle_size, seed=seed
    )
    # CheckedStream resolves the sources, polls should_stop every 1,000 records and reports
    # progress in bytes under our stage name.
    stream = CheckedStream(
        source, spec or DatasetSpec(), on_event=on_event, should_stop=should_stop, stage=STAGE
    )
    refuse_inputs(stream.paths, (output, removed_path))
    refs = _Refs()
    invalid = 0
    with AtomicJsonlWriter(output) as out, AtomicJsonlWriter(removed_path) as rem:
        for checked in stream:
            conv = checked.conversation
            if conv is None:
                invalid += 1
                continue
            refs.append(checked.ref)
            dup = dedup.check(conv)
            if dup is None:
                out.write(serialize(conv))
            else:
                rem.write(
                    {
                        "source": ref_dict(checked.ref),
                        "duplicate_of": ref_dict(refs[dup.of]),
                        "rule": dup.rule,
                        "jaccard": round(dup.jaccard, 4),
                        "row": to_sharegpt(conv),
                    }
                )
        out.commit()
        rem.commit()
    total = dedup.seen
    result = DedupResult(
        output=output,
        removed=removed_path,
        total=total,
        kept=total - dedup.exact_removed - dedup.near_removed,
        exact_removed=dedup.exact_removed,
        near_removed=dedup.near_removed,
        invalid=invalid,
        near_threshold=near_threshold,
        num_perm=num_perm,
        seconds=time.perf_counter() - start,
    )
    on_event(
        StageDone(
            STAGE,
            f"kept {result.kept:,} of {total:,}; removed {result.exact_removed:,} exact and "
            f"{result.near_removed:,} near duplicates; {invalid:,} invalid rows skipped",
            result.seconds,
        )
    )
    return result
