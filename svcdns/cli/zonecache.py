"""The last known zone's source on disk, so that a restarted agent answers at once.

DNS answers are compiled from a ServiceTable; this keeps that table (every Service with its VIPs
and its endpoints, selector Services' derived ones included) in ``dns-zone.json`` beside the VIP
allocations: ``<registry>/.svcdns/`` for the file registry, the unit's StateDirectory
($STATE_DIRECTORY, /var/lib/svcdns) for etcd. At start the agent compiles it before the workers
answer their first query, and serves it until the registry is read; the first sync replaces it.

Writes are atomic (temp file, fsync, rename) and happen off the agent's loop, at most once per
``interval`` (a second): a burst of endpoint changes at 10k Services costs one write per second,
and each write encodes again only the Services that changed (their JSON is kept by object). A file
that is missing, unreadable, from another version, for another registry or invalid is ignored with
a WARNING: the agent then starts as before, SERVFAIL in the zone until the registry is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from ..registry.documents import endpoint_document, from_document, to_document
from ..registry.files.store import STATE_DIR, atomic_write
from ..table import Key, ServiceTable, changed_keys

log = logging.getLogger(__name__)

FILE = "dns-zone.json"
VERSION = 1
INTERVAL = 1.0  # seconds between two writes, at least


def registry_key(registry: str) -> str:
    """What the file records of the registry it came from: a digest (an etcd URL may hold a password)."""
    return hashlib.sha256(registry.encode()).hexdigest()[:16]


def cache_path(registry: str, env: dict[str, str] | None = None) -> Path | None:
    """Where the zone's source lives for ``registry`` (a directory or an etcd URL); None for etcd
    outside systemd (no StateDirectory: nothing is kept)."""
    if "://" not in registry:
        return Path(registry) / STATE_DIR / FILE
    state = (os.environ if env is None else env).get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) / FILE if state else None


class ZoneCache:
    def __init__(self, path: Path, registry: str, interval: float = INTERVAL) -> None:
        self.path, self.registry, self.interval = path, registry, interval
        self._docs: dict[Key, bytes] = {}  # key -> the Service's JSON, as of self._table
        self._table: ServiceTable | None = None
        self._pending: ServiceTable | None = None
        self._saved_serial = -1
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ---- reading ------------------------------------------------------------------------------------

    def load(self) -> ServiceTable | None:
        """The table last saved for this registry, or None (and a WARNING when a file was there
        but could not be used)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("dns: cannot read the last known zone %s (%s); starting without it", self.path, err.strerror)
            return None
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version') if isinstance(doc, dict) else None!r}, expected {VERSION}")
            if doc.get("registry") != self.registry:
                log.info("dns: the last known zone %s is for another registry; starting without it", self.path)
                return None
            services = doc["services"]
            if not isinstance(services, list):
                raise ValueError("services: not a list")
            table = ServiceTable.of((from_document(s, f"{self.path}: services[{i}]") for i, s in enumerate(services)),
                                    revision=int(doc.get("revision", 0)))  # fmt: skip
        except (ValueError, KeyError, TypeError, RecursionError) as err:
            log.warning("dns: ignoring the last known zone %s: %s", self.path, " ".join(str(err).split())[:300])
            return None
        log.info("dns: answering from the last known zone (%d Services, revision %d) until the registry is read",
                 len(table), table.revision)  # fmt: skip
        return table

    # ---- writing ------------------------------------------------------------------------------------

    def encode(self, table: ServiceTable) -> list[bytes]:
        """The file for ``table``, in pieces (written one after the other: joining a 10k-Service
        zone's JSON, then encoding it, left the agent 22 MB larger); only Services that changed since
        the last call are encoded again."""
        docs = self._docs
        if self._table is None:
            keys: Iterable[Key] = list(table.services)
        else:  # from the table's lineage: what changed since the last save, not every Service
            keys = changed_keys(self._table, table)
        for key in keys:
            svc = table.services.get(key)
            if svc is None:
                docs.pop(key, None)
                continue
            doc = to_document(svc)
            if "selector" in doc:  # the zone needs the endpoints the pods gave, not how to find them
                del doc["selector"]
                doc.pop("publishNotReadyAddresses", None)
                doc["endpoints"] = [endpoint_document(e) for e in svc.endpoints]
            docs[key] = json.dumps(doc, separators=(",", ":")).encode()
        self._table = table
        head = json.dumps({"version": VERSION, "registry": self.registry, "revision": table.revision})
        pieces = [f'{head[:-1]}, "services": ['.encode()]
        for i, text in enumerate(docs.values()):
            if i:
                pieces.append(b",")
            pieces.append(text)
        pieces.append(b"]}\n")
        return pieces

    def save(self, table: ServiceTable) -> None:
        try:
            atomic_write(self.path, self.encode(table), 0o600)
        except OSError as err:
            log.warning("dns: cannot keep the last known zone in %s (%s)", self.path, err.strerror or err)

    def offer(self, table: ServiceTable) -> None:
        """Save ``table`` soon (the latest of what is offered within ``interval``); never waits."""
        with self._cond:
            self._pending = table
            self._cond.notify()

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="svcdns-zone-cache", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is pending, then end the writer."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def _run(self) -> None:
        last = 0.0
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._pending is None:
                    return
                wait = last + self.interval - time.monotonic()
                if wait > 0 and not self._stopping:
                    self._cond.wait(wait)  # more changes may come: the latest is written
                    continue
                table, self._pending = self._pending, None
            if table.serial != self._saved_serial:
                self.save(table)
                self._saved_serial = table.serial
            last = time.monotonic()


__all__ = ["ZoneCache", "cache_path"]
