"""Per-feature categorical vocabularies: streaming value counts and value -> contiguous id lookup."""

from __future__ import annotations

import numpy as np

# Id 0 is reserved: missing, unseen-in-training and rarer-than-min_frequency
# values all map to it, so a table needs len(vocab) + 1 rows.
RESERVED_ID: int = 0


class ValueCounter:
    """Counts uint32 values of one feature across chunks without holding every row.

    Chunk-level (unique, count) pairs are buffered and merged only when the
    buffer outgrows the merged set, so the total merge cost stays ~O(n log n).
    """

    def __init__(self) -> None:
        self._values = np.zeros(0, dtype=np.uint32)
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, values: np.ndarray) -> None:
        """values: uint32[n] (present values only)."""
        if values.size == 0:
            return
        uniq, counts = np.unique(values, return_counts=True)
        self._pending.append((uniq, counts.astype(np.int64)))
        self._pending_size += uniq.size
        if self._pending_size > max(self._values.size, 1 << 22):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        values = np.concatenate([self._values] + [u for u, _ in self._pending])
        counts = np.concatenate([self._counts] + [c for _, c in self._pending])
        self._values, inverse = np.unique(values, return_inverse=True)
        self._counts = np.bincount(inverse, weights=counts, minlength=self._values.size).astype(np.int64)
        self._pending, self._pending_size = [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted uint32[v] distinct values, int64[v] counts)."""
        self._merge()
        return self._values, self._counts


def build_vocab(values: np.ndarray, counts: np.ndarray, min_frequency: int) -> np.ndarray:
    """Sorted uint32[v] values that get their own id (count >= min_frequency)."""
    if min_frequency <= 1:
        return values
    return values[counts >= min_frequency]


def lookup_ids(vocab: np.ndarray, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Map values to ids: vocab[k] -> k + 1; missing or not in vocab -> RESERVED_ID.

    vocab: sorted uint32[v]; values: uint32[n]; missing: bool[n] -> int32[n].
    """
    if vocab.size == 0:
        return np.zeros(values.shape, dtype=np.int32)
    pos = np.searchsorted(vocab, values)
    np.minimum(pos, vocab.size - 1, out=pos)
    found = (vocab[pos] == values) & ~missing
    return np.where(found, pos + 1, RESERVED_ID).astype(np.int32)
