"""A byte-bounded LRU store: what incremental evaluation keeps between passes, and how much memory it takes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch

MB = 2**20


def nbytes(value: Any) -> int:
    """Bytes held by tensors (alone, or in lists, tuples and dicts); 64 for anything else."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value) or 64
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values()) or 64
    return 64


@dataclass(frozen=True)
class StoreUsage:
    """How the store is used: entries, bytes held now and at most, hits, misses and evictions."""

    entries: int
    bytes: int
    peak_bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int

    @property
    def mb(self) -> float:
        """Megabytes held now."""
        return self.bytes / MB

    @property
    def peak_mb(self) -> float:
        """Most megabytes held at once."""
        return self.peak_bytes / MB


class LRUStore:
    """Key -> value, evicting the least recently used entries once their bytes exceed `max_bytes`.

    Pinned entries are never evicted nor cleared (the dense model's results, which every study needs);
    they count towards the bytes held. An unpinned value larger than the whole budget is not kept.

    Args:
        max_bytes: the budget (0 keeps nothing but pinned entries).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._pinned: set[Hashable] = set()
        self._bytes = self._peak = self._hits = self._misses = self._evictions = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> Any | None:
        """The value (now the most recently used), or None."""
        item = self._items.get(key)
        if item is None:
            self._misses += 1
            return None
        self._hits += 1
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: Any, size: int | None = None, pin: bool = False) -> bool:
        """Keep a value (its size in bytes: measured when not given); False when it was too large to keep."""
        size = nbytes(value) if size is None else size
        if not pin and size > self.max_bytes:
            return False
        self.pop(key)
        self._items[key] = (value, size)
        self._bytes += size
        if pin:
            self._pinned.add(key)
        for old in [k for k in self._items if k not in self._pinned]:
            if self._bytes <= self.max_bytes:
                break
            self.pop(old)
            self._evictions += 1
        self._peak = max(self._peak, self._bytes)
        return key in self._items

    def pop(self, key: Hashable) -> Any | None:
        """Remove an entry (pinned too) and return its value, or None."""
        item = self._items.pop(key, None)
        if item is None:
            return None
        self._bytes -= item[1]
        self._pinned.discard(key)
        return item[0]

    def clear(self) -> None:
        """Drop every entry that is not pinned."""
        for key in [k for k in self._items if k not in self._pinned]:
            self.pop(key)

    def usage(self) -> StoreUsage:
        """Entries, bytes and counters."""
        return StoreUsage(len(self._items), self._bytes, self._peak, self.max_bytes, self._hits, self._misses,
                          self._evictions)
