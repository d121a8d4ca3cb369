"""``svcdns completion bash|zsh|tcsh`` and ``svcdns man``: the shell completion script and the man
page, both generated from the parser itself (shtab, argparse-manpage), so they never drift from
the commands. ``svcdns install`` writes the man page too (:func:`man_page`)."""

from __future__ import annotations

import argparse
import time

from .. import __version__
from .examples import EXAMPLES, subcommands

MAN_SECTION = 8  # a system administration command: it runs as root and programs the kernel
MAN_PAGE = f"usr/local/share/man/man{MAN_SECTION}/svcdns.{MAN_SECTION}"  # below the install root
SHELLS = ("bash", "zsh", "tcsh")


def register(sub, common: argparse.ArgumentParser) -> None:
    comp = sub.add_parser("completion", help="print the shell completion script (bash, zsh, tcsh)")
    comp.add_argument("shell", choices=SHELLS)
    comp.set_defaults(func=cmd_completion)
    man = sub.add_parser("man", help="print the man page, svcdns(8)")
    man.set_defaults(func=cmd_man)


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    import shtab  # here: only this command needs it

    return shtab.complete(parser, shell=shell)


def man_page(parser: argparse.ArgumentParser) -> str:
    """svcdns(8) in roff, from the parser: every command and option, and the examples."""
    from argparse_manpage.manpage import Manpage  # here: only `man` and `install` need it

    page = Manpage(parser)
    page.section = MAN_SECTION
    page.manual = "System Manager's Manual"
    page.source = f"svcdns {__version__}"
    page.description = "stable virtual IPs and DNS names for Services on Linux hosts"
    page.date = time.strftime("%Y-%m-%d", time.gmtime())
    examples = "".join(f".SS {_roff(path)}\n.nf\n" + "".join(f"{_roff(e)}\n" for e in EXAMPLES[path]) + ".fi\n"
                       for path, _ in subcommands(parser) if path in EXAMPLES)  # fmt: skip
    page.add_section("examples", "=", examples.rstrip("\n"))
    page.add_section("files", "=", _FILES)
    page.add_section("see also", "=", r"\fBsystemd.service\fR(5), \fBnft\fR(8), \fBjournalctl\fR(1), \fBkubectl\fR(1)")
    return str(page)


_FILES = """.TP
.I /etc/svcdns/svcdns.toml
the agent's configuration (registry, service CIDRs, DNS, health address)
.TP
.I /var/lib/svcdns/registry
the default file registry: Services as <namespace>/<name>.yaml, pods under pods/
.TP
.I /etc/systemd/system/svcdns.service
the unit that svcdns install writes"""


def _roff(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-")


def cmd_completion(args) -> int:
    print(completion(args.root_parser, args.shell), end="")
    return 0


def cmd_man(args) -> int:
    print(man_page(args.root_parser), end="")
    return 0


__all__ = ["MAN_PAGE", "MAN_SECTION", "SHELLS", "completion", "man_page", "register"]
