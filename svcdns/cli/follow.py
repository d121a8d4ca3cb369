"""``--watch`` on ``service list`` and ``pod list``: the table, then one line per change, as
``kubectl get -w`` prints them, until Ctrl-C (exit 0, nothing said).

The registry's own watch does the following (inotify for files, etcd's watch stream); this module
only turns what it knows into rows and prints the rows that changed. Its snapshots come when the
Services' table changes, and a pod that no Service selects changes no table: so the pod view is
also compared at every ``interval`` wake-up, from the pods the watch already holds in memory
(nothing is read again from the registry for it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from ..pod import Pod, PodStatus
from ..registry import Registry, Snapshot
from .output import format_row, widths_of

Rows = Mapping[Hashable, list[str]]
POD_INTERVAL = 0.2  # seconds between two looks at the watch's pods


def watched_pods(reg: Registry) -> tuple[dict[Any, Pod], dict[str, str]]:
    """The pods (not gone) and the bad pod entries as ``reg``'s running watch holds them, copied: the
    file registry keeps them on the registry itself; etcd's watch updates its state on the client's
    event loop, so the copy is taken there, never while it is being changed."""
    state = getattr(reg, "state", None)
    if state is None:  # FileRegistry
        return dict(reg.derivation.pods), dict(reg.pod_errors())  # type: ignore[attr-defined]

    async def copy() -> tuple[dict[Any, Pod], dict[str, str]]:
        return dict(state.derivation.pods), dict(reg.pod_errors())

    return reg.client.run(copy())  # type: ignore[attr-defined]


def watched_statuses(reg: Registry, pods: Iterable[Pod]) -> dict[Any, PodStatus]:
    """The status that counts for each of ``pods`` as ``reg``'s running watch holds it (as
    :func:`watched_pods`, copied on etcd's loop)."""
    state = getattr(reg, "state", None)
    derivation = reg.derivation if state is None else state.derivation  # type: ignore[attr-defined]

    def pick() -> dict[Any, PodStatus]:
        return {p.key: s for p in pods if (s := derivation.status_of(p)) is not None}

    if state is None:
        return pick()

    async def copy() -> dict[Any, PodStatus]:
        return pick()

    return reg.client.run(copy())  # type: ignore[attr-defined]


def follow(reg: Registry, header: list[str], view: Callable[[Snapshot], Rows], events: bool,
           interval: float | None = None) -> int:  # fmt: skip
    """Print ``header`` and ``view``'s rows, then each row that changes. ``interval``: wake up at least
    that often to look again (for what the snapshots do not announce)."""
    watch = reg.watch()
    try:
        snap = watch.start()
        rows = dict(view(snap))
        head = (["EVENT"] if events else []) + header
        first = [(["ADDED"] if events else []) + r for r in rows.values()]
        widths = widths_of([head, *first])
        for line in [head, *first]:
            print(format_row(line, widths))
        sys.stdout.flush()
        while True:
            got = watch.poll(interval if interval is not None else 1.0)
            if got is None and interval is None:
                continue
            snap = got or snap
            new = dict(view(snap))
            for key in [k for k in rows if k not in new] + [k for k in new if rows.get(k) != new[k]]:
                row, event = (new[key], "MODIFIED" if key in rows else "ADDED") if key in new else (rows[key], "DELETED")
                line = ([event] if events else []) + row
                widths = [max(w, len(c)) for w, c in zip(widths, line, strict=True)]
                print(format_row(line, widths))
            sys.stdout.flush()
            rows = new
    except KeyboardInterrupt:
        return 0
    finally:
        watch.close()


__all__ = ["POD_INTERVAL", "follow", "watched_pods"]
