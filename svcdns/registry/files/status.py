"""The probed pods' statuses with the file registry: one file beside the VIP allocations.

``<registry>/.svcdns/status.json``: ``{"version": 1, "pods": {"ns/name": {"ready": false, "reason":
"HTTP 503"}}}``, one line per pod. The agent's prober writes it, only when a pod's verdict changes,
atomically (temp file, fsync, rename: :func:`.store.atomic_write`) under the registry's writer lock;
probe output and timestamps are never written. A pod's status goes with the pod (``pod rm``, and
the prober drops those of pods it no longer probes), so the file never grows beyond the probed pods.

The file is status, not configuration: one that cannot be read is a WARNING and is read as empty
(every probed pod is not ready until its prober writes its verdict again, within a period), never
a crash, and the next write replaces it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ...model import ValidationError, check_label
from ...pod import PodStatus
from ...table import Key
from .store import STATE_DIR, atomic_write

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
STATUS_VERSION = 1


class StatusFile:
    """The status file as last read (``statuses``), re-read only when it changed on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.statuses: dict[Key, PodStatus] = {}
        self._stamp: tuple[int, ...] | None = None  # (inode, size, mtime) as last read; None: absent
        self._problem: str | None = None  # the last read's problem, reported once

    @property
    def path(self) -> Path:
        return self.root / STATE_DIR / STATUS_FILE

    def load(self) -> bool:
        """Re-read the file if it changed since the last read; True if ``statuses`` may differ."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            changed, self._stamp = self._stamp is not None or bool(self.statuses), None
            self.statuses = {}
            return changed
        except OSError as err:
            self._report(f"cannot read it: {err.strerror}")
            return False
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.statuses = _parse(self.path.read_bytes())
            self._problem = None
        except (OSError, ValueError, TypeError, KeyError, AttributeError, ValidationError, RecursionError) as err:
            self._report(f"not a status file ({err}); ignored: its pods are not ready until probed again")
            self.statuses = {}
        return True

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            log.warning("registry: %s: %s", self.path, problem)
        self._problem = problem

    def save(self) -> None:
        # keys are checked labels (no quoting needed) and statuses repeat: one encoding per distinct
        # status, so that rewriting 10k pods' file after one change costs ~10 ms, not ~0.3 s
        docs: dict[PodStatus, str] = {}
        lines = []
        for (ns, name), status in sorted(self.statuses.items()):
            doc = docs.get(status)
            if doc is None:
                doc = docs[status] = json.dumps(_document(status))
            lines.append(f'"{ns}/{name}": {doc}')
        text = f'{{"version": {STATUS_VERSION}, "pods": {{' + ("\n" + ",\n".join(lines) + "\n" if lines else "") + "}}\n"
        atomic_write(self.path, text.encode())
        st = os.stat(self.path)
        self._stamp, self._problem = (st.st_ino, st.st_size, st.st_mtime_ns), None


def _document(status: PodStatus) -> dict[str, object]:
    return {"ready": status.ready, **({"reason": status.reason} if status.reason else {})}


def _parse(data: bytes) -> dict[Key, PodStatus]:
    raw = json.loads(data)
    if not isinstance(raw, dict) or raw.get("version") != STATUS_VERSION or not isinstance(raw.get("pods"), dict):
        raise ValueError(f'expected {{"version": {STATUS_VERSION}, "pods": {{...}}}}')
    out: dict[Key, PodStatus] = {}
    for ref, doc in raw["pods"].items():
        ns, _, name = ref.partition("/")
        if not isinstance(doc, dict):
            raise ValueError(f"pod {ref!r}: expected a mapping")
        check_label("namespace", ns)
        check_label("name", name)
        out[(ns, name)] = PodStatus(doc["ready"], doc.get("reason", ""))
    return out


__all__ = ["STATUS_FILE", "StatusFile"]
