"""What the list and get commands print: tables, ``-o`` choices, ``kind/name`` lines, and the
one-line outcomes of writes (``service/web created``), as kubectl prints them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from ..model import Labels
from ..registry.documents import dump

LIST_FORMATS = ("table", "wide", "name", "json", "yaml")


def output_parser() -> argparse.ArgumentParser:
    """The ``-o`` option every list and get command takes."""
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("-o", "--output", choices=LIST_FORMATS, default="table",
                     help="table (default), wide (more columns), name (kind/name, one a line), json or yaml")  # fmt: skip
    return out


def watch_parser() -> argparse.ArgumentParser:
    """``-w``: the table, then a line per change until interrupted (as ``kubectl get -w``)."""
    watch = argparse.ArgumentParser(add_help=False)
    watch.add_argument("-w", "--watch", action="store_true", help="after the table, print a line per change (Ctrl-C ends)")
    watch.add_argument("--output-watch-events", action="store_true",
                       help="with --watch: an EVENT column first (ADDED, MODIFIED, DELETED)")  # fmt: skip
    return watch


def widths_of(rows: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]


def format_row(row: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()


def print_rows(rows: list[list[str]]) -> list[int]:
    """Print a table whose first row is the header; return its column widths (a watch keeps them)."""
    widths = widths_of(rows)
    for r in rows:
        print(format_row(r, widths))
    return widths


def labels_text(labels: Labels) -> str:
    return ",".join(f"{k}={v}" for k, v in labels) or "<none>"


def print_names(kind: str, names: Iterable[str]) -> None:
    for name in names:
        print(f"{kind}/{name}")


def write_doc(doc: Any, fmt: str) -> None:
    sys.stdout.write(dump(doc, fmt))


def done(what: str) -> None:
    """A write's one line: ``service/web created``, ``pod/web-0 deleted`` ..."""
    print(what)


__all__ = ["LIST_FORMATS", "done", "format_row", "labels_text", "output_parser", "print_names", "print_rows",
           "watch_parser", "widths_of", "write_doc"]  # fmt: skip
