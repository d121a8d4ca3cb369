"""Readiness probes run by the agent for the pods of its node: what a probe is (:mod:`.spec`, shared
with Services and pods), the state machine (:mod:`.state`, pure), the probe kinds (:mod:`.checks`) and
the loop that runs them and records verdicts (:mod:`.prober`).

``Prober`` is imported when first asked for: :mod:`svcdns.model` and :mod:`svcdns.pod` import
:mod:`.spec`, which must not pull in the prober (it imports them, and asyncio with it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .prober import Prober

__all__ = ["Prober"]


def __getattr__(name: str) -> Any:
    if name == "Prober":
        from .prober import Prober

        return Prober
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
