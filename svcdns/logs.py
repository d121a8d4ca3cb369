"""Logging for every command: one line per event on stderr.

On a terminal or in a file a line reads ``LEVEL logger: message``. When stderr is the journal (systemd
sets ``JOURNAL_STREAM`` to the ``device:inode`` of the stream it hands the service, sd-daemon(3)),
every line also starts with its syslog priority, ``<4>`` for a warning, so that journald files it at
that priority and ``journalctl -p warning`` finds it. A line is prefixed even inside a traceback, as
journald reads each line of the stream on its own.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

FORMAT = "%(levelname)s %(name)s: %(message)s"


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: err 3, warning 4, info 6, debug 7."""
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """Today's format with ``<priority>`` in front of every line."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def is_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``stream`` is the journal stream systemd named in ``JOURNAL_STREAM``: the variable alone
    is not enough, since a child whose stderr was redirected inherits it too."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor behind it (pytest's capture, a closed stream)
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def formatter_for(stream: TextIO, environ: Mapping[str, str] = os.environ, fmt: str = FORMAT) -> logging.Formatter:
    return JournalFormatter(fmt) if is_journal(stream, environ) else logging.Formatter(fmt)


def setup(level: int, stream: TextIO | None = None, fmt: str = FORMAT) -> None:
    """Send every logger's records at ``level`` or above to ``stream`` (default stderr), once per
    process (the CLI's, and each DNS worker's, with its number in ``fmt``)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter_for(stream, fmt=fmt))
    logging.basicConfig(level=level, handlers=[handler])
