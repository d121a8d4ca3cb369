"""A mapping that is never changed in place: :meth:`PersistentMap.evolve` returns a new one.

The keys are spread over shards by hash, about sqrt(N) of them (at least 256) for the N keys it
was built with; a new version shares every shard it did not touch with the old one, so a change of
k keys costs the shard list and k shard copies (~sqrt(N) entries each), not a copy of the whole map. That keeps :meth:`.ruleset.Ruleset.apply` as cheap as the Services it changes
while the Ruleset the kernel last took stays intact until the next one is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

MIN_SHARDS = 256


class PersistentMap(Mapping[K, V], Generic[K, V]):
    __slots__ = ("_len", "_shards")

    def __init__(self, items: Mapping[K, V] | None = None) -> None:
        items = items or {}
        count = max(MIN_SHARDS, 1 << (len(items).bit_length() + 1) // 2)  # a power of two near sqrt(N)
        shards: list[dict[K, V]] = [{} for _ in range(count)]
        for k, v in items.items():
            shards[hash(k) % count][k] = v
        self._shards = tuple(shards)
        self._len = sum(map(len, shards))

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) % len(self._shards)][key]

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) % len(self._shards)]

    def __iter__(self) -> Iterator[K]:
        for shard in self._shards:
            yield from shard

    def __len__(self) -> int:
        return self._len

    def evolve(self, updates: Mapping[K, V], deletes: Iterable[K] = ()) -> PersistentMap[K, V]:
        """A new map with ``deletes`` removed, then ``updates`` set; this one stays as it was."""
        shards = list(self._shards)
        copied: set[int] = set()
        length = self._len

        def shard(key: K) -> dict[K, V]:
            i = hash(key) % len(shards)
            if i not in copied:
                shards[i] = dict(shards[i])
                copied.add(i)
            return shards[i]

        for k in deletes:
            if k in self:
                del shard(k)[k]
                length -= 1
        for k, v in updates.items():
            s = shard(k)
            length += k not in s
            s[k] = v
        new: PersistentMap[K, V] = PersistentMap.__new__(PersistentMap)
        new._shards, new._len = tuple(shards), length
        return new
