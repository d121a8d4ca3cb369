"""Pod files: ``<root>/pods/<ns>/<name>.yaml`` (or ``.yml`` / ``.json``), one Pod document each.

The path names the pod: a document may leave out ``name`` and ``namespace``, and one that names
another pod is refused. Every other file of the registry is a Service file (a Service of namespace
``pods`` sits at ``pods/<name>.yaml``, one level up, and stays one). Pod files have the guarantees
of Service files (:mod:`.tree` picks the names, the watch reads only closed or renamed-in files, the
CLI writes atomically under the registry lock), and a bad one is reported with file, field and value
while its pod's last good version stays in force.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...pod import Pod
from ...table import Key
from ..documents import DocumentError, parse, pod_from_document
from .entries import Entries
from .tree import SUFFIXES, precedence, read

log = logging.getLogger(__name__)

POD_DIR = "pods"


def is_pod_file(rel: str) -> bool:
    parts = rel.split("/")
    return len(parts) == 3 and parts[0] == POD_DIR


def pod_path(key: Key, suffix: str = ".yaml") -> str:
    return f"{POD_DIR}/{key[0]}/{key[1]}{suffix}"


def key_of(rel: str) -> Key:
    _, ns, name = rel.split("/")
    return (ns, name.rsplit(".", 1)[0])


@dataclass(frozen=True, slots=True)
class PodEntry:
    pod: Pod | None = None  # the last good version
    error: str | None = None
    stamp: tuple[int, ...] | None = None  # the file as read: (inode, size, mtime, ctime) in ns

    def index_key(self) -> Key | None:
        return None  # a pod's file is named by its key: no index needed


# A file whose stamp is unchanged is not read again (the prober lists 10k pods every few seconds:
# parsing them all cost ~0.3 s of CPU per thousand). Only files last changed at least this long
# before they were read get a stamp, so two writes within the clock's granularity are never missed.
SETTLED_NS = 1_000_000_000


def _stamp(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < SETTLED_NS:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PodFiles:
    """What the pod files hold, by file; the pod of a key is its file's of highest precedence."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: Entries[PodEntry] = Entries()

    def read(self, rel: str) -> None:
        """(Re-)read one pod file, unless it is the one last read; a missing file removes its entry."""
        stamp = _stamp(self.root / rel)
        old = self.entries.get(rel)
        if stamp is not None and old is not None and old.stamp == stamp:
            return
        try:
            data = read(self.root, rel)
            if data is None:
                self.entries.pop(rel, None)
                return
            pod = self.decode(rel, data)
        except DocumentError as err:
            old = self.entries.get(rel)
            if old is None or old.error != str(err):
                kept = "; keeping the last good version of the pod" if old and old.pod else ""
                log.error("registry: %s%s", err, kept)
            self.entries[rel] = PodEntry(old.pod if old else None, str(err))
            return
        self.entries[rel] = PodEntry(pod, None, stamp)

    @staticmethod
    def decode(rel: str, data: bytes) -> Pod:
        ns, name = key_of(rel)
        doc: Any = parse(data, rel, None, "a Pod needs at least its address")
        if isinstance(doc, dict):
            for field, value in (("namespace", ns), ("name", name)):
                if doc.setdefault(field, value) != value:
                    raise DocumentError(rel, field, doc[field], f"must be {value!r}, as the file's path says")
        return pod_from_document(doc, rel)

    def pod(self, key: Key) -> Pod | None:
        entry = self.entries.get(self.file_of(key) or "")
        return entry.pod if entry else None

    def file_of(self, key: Key) -> str | None:
        """The file that defines ``key``'s pod (read or not), if any exists on disk or was read."""
        have = [pod_path(key, s) for s in SUFFIXES if pod_path(key, s) in self.entries]
        good = [rel for rel in have if self.entries[rel].pod is not None]
        return min(good or have, key=precedence) if have else None

    def find(self, key: Key) -> str | None:
        """Re-read ``key``'s files from disk and return the one that defines it."""
        for suffix in SUFFIXES:
            rel = pod_path(key, suffix)
            if (self.root / rel).is_file() or rel in self.entries:
                self.read(rel)
        return self.file_of(key)

    def errors(self) -> dict[str, str]:
        return self.entries.errors


__all__ = ["POD_DIR", "PodEntry", "PodFiles", "is_pod_file", "key_of", "pod_path"]
