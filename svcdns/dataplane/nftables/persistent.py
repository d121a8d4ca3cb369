"""A mapping that is never changed in place: :meth:`PersistentMap.evolve` returns a new one.

The keys are spread over a fixed number of shards by hash; a new version shares every shard it did
not touch with the old one, so a change of k keys costs k shard copies (~N/256 entries each), not a
copy of the whole map. That keeps :meth:`.ruleset.Ruleset.apply` as cheap as the Services it changes
while the Ruleset the kernel last took stays intact until the next one is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

SHARDS = 256


class PersistentMap(Mapping[K, V], Generic[K, V]):
    __slots__ = ("_len", "_shards")

    def __init__(self, items: Mapping[K, V] | None = None) -> None:
        shards: list[dict[K, V]] = [{} for _ in range(SHARDS)]
        for k, v in (items or {}).items():
            shards[hash(k) % SHARDS][k] = v
        self._shards = tuple(shards)
        self._len = sum(map(len, shards))

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) % SHARDS][key]

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) % SHARDS]

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
            i = hash(key) % SHARDS
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
