"""The file registry's private state beside the service files: a lock and the VIP allocation store.

Both live in ``<registry>/.svcdns/`` (a hidden directory, so it is never read as a Service):

- ``lock``: an ``flock`` that serialises every writer (the CLI, the agent allocating for a hand-written
  file), so two ``svcdns endpoint add`` running at once both land;
- ``allocations.json``: ``{"version": 1, "serviceCIDRs": [...], "generation": G, "services": {"ns/name":
  {"clusterIPs": [...], "file": "ns/name.yaml"}}}``, written atomically (temp file, fsync, rename,
  fsync of the directory);
- ``allocations.log``: what changed since, one JSON line per Service allocated (``{"service":
  "ns/name", "clusterIPs": [...], "file": ...}``) or released (``{"service": ..., "released":
  true}``), after a first line ``{"generation": G}``. A change appends its lines and fsyncs them:
  rewriting the whole store for each new Service cost 4 ms at 10k Services and 40 ms at 100k.
  When the log holds more lines than half the store (at least 1,000), the next write rewrites
  ``allocations.json`` whole with the next generation and removes the log; a log whose generation
  is not the store's (a crash between the two) is stale and ignored. A last line cut short by a
  crash is ignored (its write was never acknowledged) and the next write rewrites the store.

Readers need no lock: a reader that finds a log of a newer generation than the store it read
raced a rewrite, and reads the store again.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import SvcdnsError
from ...ipam import DEFAULT_SERVICE_CIDRS, Allocator
from ...model import IPAddress

log = logging.getLogger(__name__)

STATE_DIR = ".svcdns"
STORE_VERSION = 1
COMPACT_AT = 1000  # log lines past which (and past half the store) the next write rewrites the store


def atomic_write(path: Path, data: bytes | Iterable[bytes], mode: int = 0o644) -> None:
    """Write ``path`` so that readers see either the old or the new content: a temp file in the same
    directory (hidden, so watchers ignore it), fsync, rename over, fsync the directory. ``data`` may
    be the content's pieces, written one after the other (a large file is never joined in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                f.writelines(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class Allocation:
    ips: tuple[IPAddress, ...]
    file: str = ""  # the service file (relative path) that declared it, to tell "deleted" from "unreadable"


class _Tracked(dict[str, Allocation]):
    """The store's allocations, remembering which holders were set or removed since the last save
    (so that a save writes only those). Every mutation the store's users make goes through these."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.dirty: set[str] = set(self)

    def __setitem__(self, key: str, value: Allocation) -> None:
        super().__setitem__(key, value)
        self.dirty.add(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.dirty.add(key)

    def pop(self, key, *default):
        if key in self:
            self.dirty.add(key)
        return super().pop(key, *default)

    def _refuse(self, *_a, **_k):
        raise TypeError("AllocationStore.services: set, delete or pop one holder at a time")

    update = setdefault = popitem = clear = _refuse


@dataclass
class AllocationStore:
    root: Path
    cidrs: list[str] = field(default_factory=lambda: list(DEFAULT_SERVICE_CIDRS))
    services: _Tracked = field(default_factory=_Tracked)
    mtime_ns: int = -1
    generation: int = 0
    _logged: int = field(default=0, repr=False, compare=False)  # lines in the log (past COMPACT_AT forces a rewrite)
    _log_stat: tuple[int, int] = field(
        default=(-1, -1), repr=False, compare=False
    )  # the log's (mtime, size) as last seen
    _saved_cidrs: list[str] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.services, _Tracked):
            self.services = _Tracked(self.services)

    @property
    def path(self) -> Path:
        return self.root / STATE_DIR / "allocations.json"

    @property
    def log_path(self) -> Path:
        return self.root / STATE_DIR / "allocations.log"

    @classmethod
    def load(cls, root: Path, cidrs: list[str] | None = None) -> AllocationStore:
        """Read the store and its log; ``cidrs`` None means the CIDRs recorded there (else the default)."""
        for _ in range(3):  # a rewrite between reading the store and its log: read again
            store = cls._load_once(root, cidrs)
            if store is not None:
                return store
        raise SvcdnsError(f"{root / STATE_DIR}: the VIP allocation store kept changing while it was read")

    @classmethod
    def _load_once(cls, root: Path, cidrs: list[str] | None) -> AllocationStore | None:
        store = cls(root)
        try:
            st = store.path.stat()
            raw = json.loads(store.path.read_bytes())
        except FileNotFoundError:
            store.cidrs = list(cidrs or DEFAULT_SERVICE_CIDRS)
            store.services.dirty.clear()
            return store
        except (OSError, ValueError) as err:
            raise SvcdnsError(
                f"{store.path}: cannot read the VIP allocation store: {err}; "
                "restore it from a backup, or remove it to re-allocate every VIP"
            ) from None
        store.mtime_ns = st.st_mtime_ns
        if not isinstance(raw, dict) or raw.get("version") != STORE_VERSION:
            raise SvcdnsError(f"{store.path}: unknown format (expected version {STORE_VERSION})")
        store._saved_cidrs = list(raw.get("serviceCIDRs") or DEFAULT_SERVICE_CIDRS)
        store.cidrs = list(cidrs or store._saved_cidrs)
        store.generation = int(raw.get("generation", 0))
        services = store.services
        for holder, entry in (raw.get("services") or {}).items():
            ips = tuple(ipaddress.ip_address(ip) for ip in entry.get("clusterIPs", []))
            dict.__setitem__(services, holder, Allocation(ips, entry.get("file", "")))
        if not store._replay():
            return None
        services.dirty.clear()
        return store

    def _replay(self) -> bool:
        """Apply the log of this store's generation; False if it is of a newer one (reread the store)."""
        try:
            with open(self.log_path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return True
        except OSError as err:
            raise SvcdnsError(f"{self.log_path}: cannot read the VIP allocation log: {err.strerror}") from None
        self._log_stat = (st.st_mtime_ns, st.st_size)
        lines = data.split(b"\n")
        try:
            head = json.loads(lines[0])
            generation = int(head["generation"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s: no generation on its first line; ignoring it (the store is rewritten at the next change)",
                        self.log_path)  # fmt: skip
            self._logged = COMPACT_AT * 1000
            return True
        if generation > self.generation:
            return False
        if generation < self.generation:  # left by a crash during a rewrite: the store has it all
            self._logged = COMPACT_AT * 1000
            return True
        complete, tail = lines[1:-1], lines[-1]
        if tail:
            log.warning("%s: its last line was cut short (a crash while writing it); ignoring that line", self.log_path)
            self._logged = COMPACT_AT * 1000
        services = self.services
        for n, line in enumerate(complete, 2):
            try:
                entry = json.loads(line)
                holder = entry["service"]
                if entry.get("released"):
                    dict.pop(services, holder, None)
                else:
                    ips = tuple(ipaddress.ip_address(ip) for ip in entry["clusterIPs"])
                    dict.__setitem__(services, holder, Allocation(ips, entry.get("file", "")))
            except (ValueError, KeyError, TypeError) as err:
                raise SvcdnsError(
                    f"{self.log_path}: line {n}: {err}; restore the registry's .svcdns/ from a backup"
                ) from None
        self._logged = max(self._logged, len(complete))
        return True

    def changed_on_disk(self) -> bool:
        try:
            changed = self.path.stat().st_mtime_ns != self.mtime_ns
        except FileNotFoundError:
            changed = self.mtime_ns != -1
        try:
            st = self.log_path.stat()
            return changed or (st.st_mtime_ns, st.st_size) != self._log_stat
        except FileNotFoundError:
            return changed or self._log_stat != (-1, -1)

    def allocator(self) -> Allocator:
        alloc = Allocator(self.cidrs)
        for holder, entry in self.services.items():
            alloc.restore(holder, entry.ips)
        return alloc

    def save(self) -> None:
        """Persist what changed since the last save: appended to the log, or the store rewritten."""
        dirty = self.services.dirty
        if not dirty and self.cidrs == self._saved_cidrs and self.mtime_ns != -1:
            return
        if (
            self.mtime_ns == -1
            or self.cidrs != self._saved_cidrs
            or self._logged + len(dirty) > max(COMPACT_AT, len(self.services) // 2)
        ):
            self._rewrite()
        else:
            self._append(sorted(dirty))
        dirty.clear()

    def _append(self, holders: list[str]) -> None:
        lines = []
        for holder in holders:
            entry = self.services.get(holder)
            doc = {"service": holder, "released": True} if entry is None else \
                {"service": holder, "clusterIPs": [str(ip) for ip in entry.ips], "file": entry.file}  # fmt: skip
            lines.append(json.dumps(doc) + "\n")
        path = self.log_path
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            created = os.fstat(fd).st_size == 0
            head = json.dumps({"generation": self.generation}) + "\n" if created else ""
            os.write(fd, (head + "".join(lines)).encode())
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(path.parent)
        self._log_stat = (st.st_mtime_ns, st.st_size)
        self._logged += len(lines)

    def _rewrite(self) -> None:
        """The whole store, one line per allocation in holder order, as the next generation; then the
        log goes (a crash in between leaves a log of the old generation, which is then ignored)."""
        # encoded afresh: a rewrite comes once per thousands of changes, and keeping each line for it
        # cost 1.9 MiB at 10k Services
        lines = []
        for holder in sorted(self.services):
            entry = self.services[holder]
            doc = {"clusterIPs": [str(ip) for ip in entry.ips], "file": entry.file}
            lines.append(f"{json.dumps(holder)}: {json.dumps(doc)}")
        generation = self.generation + 1
        head = (f'{{"version": {STORE_VERSION}, "serviceCIDRs": {json.dumps(self.cidrs)}, '
                f'"generation": {generation}, "services": {{')  # fmt: skip
        text = head + ("\n" + ",\n".join(lines) + "\n" if lines else "") + "}}\n"
        atomic_write(self.path, text.encode())
        self.mtime_ns = self.path.stat().st_mtime_ns
        self.generation = generation
        self._saved_cidrs = list(self.cidrs)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log_path)
        self._logged, self._log_stat = 0, (-1, -1)


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


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
