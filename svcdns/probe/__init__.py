"""Readiness probes run by the agent for the pods of its node: the state machine (:mod:`.state`,
pure), the probe kinds (:mod:`.checks`) and the loop that runs them and records verdicts
(:mod:`.prober`)."""

from __future__ import annotations

from .prober import Prober

__all__ = ["Prober"]
