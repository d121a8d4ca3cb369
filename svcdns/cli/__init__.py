"""The ``svcdns`` command line: ``svcdns <command> ...``.

Each area registers its own commands (``register(subparsers, common)``) so this module stays a
thin dispatcher: the registry commands (``service``, ``endpoint``) live in ``svcdns.cli.registry``,
and so on. A command's handler returns the exit code: 0 ok, 1 runtime failure, 2 bad usage/config.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import sys
from typing import NoReturn

from .. import __version__, logs
from ..errors import SvcdnsError
from .config import DEFAULT_REGISTRY
from .examples import add_examples

# modules with a ``register(subparsers, common)`` function, in the order their commands are listed
COMMAND_MODULES = [
    "svcdns.cli.registry",
    "svcdns.cli.pods",
    "svcdns.cli.nodes",
    "svcdns.cli.apply",
    "svcdns.cli.dns",
    "svcdns.cli.dataplane",
    "svcdns.cli.agent",
    "svcdns.cli.install",
    "svcdns.cli.resolvconf",
    "svcdns.cli.manual",
]


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """``-n/--namespace``, ``--registry`` and ``-v``: accepted before or after the command. The copies on
    the subcommands default to SUPPRESS so they override the top-level value only when given."""

    def default(value):
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "-n", "--namespace", default=default("default"), help="the Services' namespace (default: default)"
    )
    parser.add_argument(
        "--registry",
        default=default(None),
        help="registry directory (or etcd://host:port/prefix); default $SVCDNS_REGISTRY, the config "
        f"file's registry, or {DEFAULT_REGISTRY}",
    )
    parser.add_argument("-v", "--verbose", action="count", default=default(0), help="more log output (-vv: debug)")


def common_parser() -> argparse.ArgumentParser:
    """The parent parser every command adds: the common options."""
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, suppress=True)
    return common


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # exit 2 with a usage line, as argparse does, but no traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="svcdns", description="Stable virtual IPs and DNS names for Services on Linux hosts.")
    parser.add_argument("--version", action="version", version=f"svcdns {__version__}")
    _add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    common = common_parser()
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    add_examples(parser)
    parser.set_defaults(root_parser=parser)  # for the commands generated from it (completion, man)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(getattr(args, "verbose", 0) or 0, 2)
    logs.setup(level)
    try:
        return int(args.func(args) or 0)
    except SvcdnsError as err:
        print(f"svcdns: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if _stdout_closed():  # `svcdns service list | head`: the reader left, nothing failed
            return 0
        logging.getLogger("svcdns").exception("svcdns: internal error (a pipe closed)")
        return 1
    except Exception:  # noqa: BLE001 - a bug: say so with its traceback, and never exit 0
        logging.getLogger("svcdns").exception("svcdns: internal error")
        return 1


def _stdout_closed() -> bool:
    """Whether our own stdout is the pipe whose reader went away (then exit quietly, with stdout
    pointed at /dev/null so the interpreter's final flush does not complain). The write that failed
    may have emptied the buffer already, so the pipe itself is asked too: its write end polls
    POLLERR once no reader is left."""
    try:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))
    except BrokenPipeError:
        gone, fd = True, sys.stdout.fileno()
    except (OSError, ValueError):
        return False
    if gone:
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return gone
