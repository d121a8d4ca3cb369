"""The file registry's private state beside the service files: a lock and the VIP allocation store.

Both live in ``<registry>/.svcdns/`` (a hidden directory, so it is never read as a Service):

- ``lock``: an ``flock`` that serialises every writer (the CLI, the agent allocating for a hand-written
  file), so two ``svcdns endpoint add`` running at once both land;
- ``allocations.json``: ``{"version": 1, "serviceCIDRs": [...], "services": {"ns/name": {"clusterIPs":
  [...], "file": "ns/name.yaml"}}}``, written atomically (temp file, fsync, rename, fsync of the
  directory). Readers need no lock: they see the old or the new file, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import SvcdnsError
from ...ipam import DEFAULT_SERVICE_CIDRS, Allocator
from ...model import IPAddress

log = logging.getLogger(__name__)

STATE_DIR = ".svcdns"
STORE_VERSION = 1


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` so that readers see either the old or the new content: a temp file in the same
    directory (hidden, so watchers ignore it), fsync, rename over, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class Allocation:
    ips: tuple[IPAddress, ...]
    file: str = ""  # the service file (relative path) that declared it, to tell "deleted" from "unreadable"


@dataclass
class AllocationStore:
    root: Path
    cidrs: list[str] = field(default_factory=lambda: list(DEFAULT_SERVICE_CIDRS))
    services: dict[str, Allocation] = field(default_factory=dict)
    mtime_ns: int = -1
    # each allocation's line of the file, kept while the allocation object is the same one, so that
    # saving a 10k-Service store after one allocation encodes one line (75 ms -> ~10 ms)
    _lines: dict[str, tuple[Allocation, str]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def path(self) -> Path:
        return self.root / STATE_DIR / "allocations.json"

    @classmethod
    def load(cls, root: Path, cidrs: list[str] | None = None) -> AllocationStore:
        """Read the store; ``cidrs`` None means the CIDRs recorded there (else the default)."""
        store = cls(root)
        try:
            st = store.path.stat()
            raw = json.loads(store.path.read_bytes())
        except FileNotFoundError:
            store.cidrs = list(cidrs or DEFAULT_SERVICE_CIDRS)
            return store
        except (OSError, ValueError) as err:
            raise SvcdnsError(
                f"{store.path}: cannot read the VIP allocation store: {err}; "
                "restore it from a backup, or remove it to re-allocate every VIP"
            ) from None
        store.mtime_ns = st.st_mtime_ns
        if not isinstance(raw, dict) or raw.get("version") != STORE_VERSION:
            raise SvcdnsError(f"{store.path}: unknown format (expected version {STORE_VERSION})")
        store.cidrs = list(cidrs or raw.get("serviceCIDRs") or DEFAULT_SERVICE_CIDRS)
        for holder, entry in (raw.get("services") or {}).items():
            ips = tuple(ipaddress.ip_address(ip) for ip in entry.get("clusterIPs", []))
            store.services[holder] = Allocation(ips, entry.get("file", ""))
        return store

    def changed_on_disk(self) -> bool:
        try:
            return self.path.stat().st_mtime_ns != self.mtime_ns
        except FileNotFoundError:
            return self.mtime_ns != -1

    def allocator(self) -> Allocator:
        alloc = Allocator(self.cidrs)
        for holder, entry in self.services.items():
            alloc.restore(holder, entry.ips)
        return alloc

    def save(self) -> None:
        """Write the store atomically: JSON with one line per allocation, in holder order."""
        lines = []
        cache = self._lines
        for holder in sorted(self.services):
            entry = self.services[holder]
            cached = cache.get(holder)
            if cached is None or cached[0] is not entry:
                doc = {"clusterIPs": [str(ip) for ip in entry.ips], "file": entry.file}
                cached = cache[holder] = (entry, f"{json.dumps(holder)}: {json.dumps(doc)}")
            lines.append(cached[1])
        for holder in [h for h in cache if h not in self.services]:
            del cache[holder]
        head = f'{{"version": {STORE_VERSION}, "serviceCIDRs": {json.dumps(self.cidrs)}, "services": {{'
        text = head + ("\n" + ",\n".join(lines) + "\n" if lines else "") + "}}\n"
        atomic_write(self.path, text.encode())
        self.mtime_ns = self.path.stat().st_mtime_ns


@contextlib.contextmanager
def registry_lock(root: Path) -> Iterator[None]:
    """Hold the registry's writer lock (blocking)."""
    state = root / STATE_DIR
    try:
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise SvcdnsError(f"{state / 'lock'}: cannot open the registry lock: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
