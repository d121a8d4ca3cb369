"""A probe's outcome: every probe kind returns one, never raises."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool
    reason: str = ""  # why it failed: "connection refused", "HTTP 503", "timeout after 1 s", "exit status 1"
    timed_out: bool = False  # it failed by its timeout (counted apart in svcdns_probes_total)


__all__ = ["Result"]
