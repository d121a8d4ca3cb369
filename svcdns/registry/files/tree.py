"""Which files of a registry directory are service files, and reading one within limits.

Service files end in ``.yaml``, ``.yml`` or ``.json`` and may sit anywhere below the directory; hidden
files and directories, editor and package-manager leftovers (``.x``, ``x~``, ``#x#``, ``x.swp``,
``x.tmp``, ``x.bak`` ...) are never read. A name that is not a regular file (a FIFO, a device, a
socket, or a symlink to one) is refused without being opened for a blocking read, and at most
:data:`~svcdns.registry.documents.MAX_DOCUMENT_BYTES` + 1 bytes are read of any file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ...table import Key
from ..documents import MAX_DOCUMENT_BYTES, DocumentError

SUFFIXES = (".yaml", ".yml", ".json")  # in order of precedence for one Service at its canonical path
_IGNORED_SUFFIXES = ("~", ".swp", ".swx", ".tmp", ".part", ".bak", ".orig", ".rej", ".dpkg-new", ".dpkg-old")


def is_service_file(name: str) -> bool:
    """Whether a file name can hold a Service (not hidden, not an editor or package manager leftover)."""
    if name.startswith((".", "#")) or name.endswith(_IGNORED_SUFFIXES):
        return False
    return name.endswith(SUFFIXES)


def canonical(key: Key, suffix: str = ".yaml") -> str:
    """Where the CLI writes a Service: ``<ns>/<name>.yaml``."""
    return f"{key[0]}/{key[1]}{suffix}"


def precedence(rel: str) -> tuple[int, str]:
    """Sort key among files at one canonical path: ``.yaml`` before ``.yml`` before ``.json``."""
    suffix = next((s for s in SUFFIXES if rel.endswith(s)), "")
    return (SUFFIXES.index(suffix) if suffix else len(SUFFIXES), rel)


def walk(root: Path) -> Iterator[str]:
    """Relative paths of every candidate service file below ``root``, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            if is_service_file(name):
                yield name if rel_dir == "." else f"{rel_dir}/{name}"


def read(root: Path, rel: str) -> bytes | None:
    """The bytes of ``root/rel`` (at most the document limit + 1), or None if it is gone or a
    directory; DocumentError naming ``rel`` if it cannot be read or is not a regular file."""
    path = root / rel
    try:
        if not _regular(rel, os.stat(path)):
            return None
        # O_NONBLOCK: a FIFO put in place between the stat and the open must not hang the reader
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise DocumentError(rel, "", None, f"cannot read: {err.strerror}") from None
    try:
        if not _regular(rel, os.fstat(fd)):
            return None
        chunks, left = [], MAX_DOCUMENT_BYTES + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as err:
        raise DocumentError(rel, "", None, f"cannot read: {err.strerror}") from None
    finally:
        os.close(fd)


def _regular(rel: str, st: os.stat_result) -> bool:
    if stat.S_ISDIR(st.st_mode):
        return False
    if not stat.S_ISREG(st.st_mode):
        raise DocumentError(rel, "", None, "is not a regular file (a FIFO, device or socket); it is not read")
    return True


__all__ = ["SUFFIXES", "canonical", "is_service_file", "precedence", "read", "walk"]
