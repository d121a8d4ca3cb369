"""The transaction: what one sync sends, in order, as one netlink batch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Transaction:
    """What one sync sends, in order, as one netlink batch: all of it applies or none of it."""

    family: str
    ops: list[tuple] = field(default_factory=list)

    def add(self, *op) -> None:
        self.ops.append(op)

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self):
        return iter(self.ops)

