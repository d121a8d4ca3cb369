"""What the registry's files hold, by file, with the indexes a change needs kept in step.

A change of one file must cost what that file holds, not what the directory holds: so the files
that declare each Service, and the files in error, are indexed as entries are set and removed,
instead of being found by scanning every entry per change.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from ...table import Key


class Entry(Protocol):
    @property
    def error(self) -> str | None: ...

    def index_key(self) -> Key | None: ...


E = TypeVar("E", bound=Entry)


class Entries(dict[str, E], Generic[E]):
    """``{file: entry}``, plus ``by_key`` (index key -> the files whose entry has it) and
    ``errors`` (file -> its error). Set, delete and pop keep both; nothing else may change it.

    A key declared by one file (nearly all) maps to that file's name, only one declared by several
    to a set of them: a set of one costs 216 bytes, 21 MiB at 100k Services."""

    def __init__(self) -> None:
        super().__init__()
        self.by_key: dict[Key, str | set[str]] = {}
        self.errors: dict[str, str] = {}

    def __setitem__(self, rel: str, entry: E) -> None:
        if rel in self:
            self._forget(rel, self[rel])
        super().__setitem__(rel, entry)
        key = entry.index_key()
        if key is not None:
            files = self.by_key.get(key)
            if files is None or files == rel:
                self.by_key[key] = rel
            elif isinstance(files, str):
                self.by_key[key] = {files, rel}
            else:
                files.add(rel)
        if entry.error:
            self.errors[rel] = entry.error

    def __delitem__(self, rel: str) -> None:
        self._forget(rel, self[rel])
        super().__delitem__(rel)

    def pop(self, rel: str, default: E | None = None) -> E | None:  # type: ignore[override]
        if rel not in self:
            return default
        entry = self[rel]
        del self[rel]
        return entry

    def files_of(self, key: Key) -> set[str]:
        files = self.by_key.get(key)
        if files is None:
            return set()
        return {files} if isinstance(files, str) else set(files)

    def _forget(self, rel: str, entry: E) -> None:
        key = entry.index_key()
        if key is not None:
            files = self.by_key[key]
            if isinstance(files, str):
                if files == rel:
                    del self.by_key[key]
            else:
                files.discard(rel)
                if len(files) == 1:
                    self.by_key[key] = files.pop()
        self.errors.pop(rel, None)

    def setdefault(self, *_: object) -> E:  # pragma: no cover - not part of its interface
        raise TypeError("Entries.setdefault is not supported: set the entry")

    def update(self, *_: object, **__: object) -> None:  # pragma: no cover - not part of its interface
        raise TypeError("Entries.update is not supported: set each entry")


__all__ = ["Entries", "Entry"]
