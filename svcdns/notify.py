"""sd_notify in a few lines of Python: READY=1, STATUS=, WATCHDOG=1, STOPPING=1, and the
file-descriptor store (FDSTORE=1 with the descriptors over SCM_RIGHTS, FDSTOREREMOVE=1); and
sd_listen_fds: the descriptors systemd hands back at start ($LISTEN_FDS, $LISTEN_FDNAMES).

Does nothing when not started by systemd (no $NOTIFY_SOCKET). Abstract socket names ("@...") are
supported. The watchdog interval comes from $WATCHDOG_USEC (send at half of it).
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Mapping, MutableMapping

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first descriptor systemd passes
FDNAME_MAX = 255


def fdname_ok(name: str) -> bool:
    """systemd's rule for an FDNAME=: printable ASCII without ':' (the separator of $LISTEN_FDNAMES)."""
    return len(name) <= FDNAME_MAX and all(" " <= c < "\x7f" and c != ":" for c in name)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and (not pid or pid == str(os.getpid())) else None

    def send(self, *fields: str, fds: list[int] | None = None) -> bool:
        if not self.address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                data = "\n".join(fields).encode()
                if fds:  # (socket.send_fds drops its address argument before Python 3.12)
                    s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], 0, self.address)
                else:
                    s.sendto(data, self.address)
            except OSError:
                return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1")

    def store_fd(self, name: str, fd: int) -> bool:
        """Keep a duplicate of ``fd`` in systemd's file-descriptor store under ``name`` (the unit needs
        ``FileDescriptorStoreMax=``); systemd ignores a descriptor it holds already."""
        if not fdname_ok(name):
            raise ValueError(f"file descriptor name {name!r}: printable ASCII without ':', at most {FDNAME_MAX}")
        return self.send("FDSTORE=1", f"FDNAME={name}", fds=[fd])

    def remove_fds(self, name: str) -> bool:
        """Close every descriptor systemd stores under ``name``."""
        return self.send("FDSTOREREMOVE=1", f"FDNAME={name}")


def listen_fds(env: MutableMapping[str, str] | None = None, unset: bool = True) -> list[tuple[str, int]]:
    """The descriptors systemd passed to this process, as ``(name, fd)`` in order (an unnamed one is
    named "unknown", as sd_listen_fds_with_names does), marked close-on-exec; none unless
    $LISTEN_PID is this process. ``unset`` removes the variables, so children never take them."""
    env = os.environ if env is None else env
    pid, count, names = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", ""), env.get("LISTEN_FDNAMES", "")
    if unset:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
    if pid != str(os.getpid()) or not count.isdigit() or not count.isascii():
        return []
    labels = names.split(":") if names else []
    out = []
    for i in range(int(count)):
        fd = LISTEN_FDS_START + i
        try:
            os.set_inheritable(fd, False)
        except OSError:
            continue  # not open after all: nothing to take
        out.append((labels[i] if i < len(labels) and labels[i] else "unknown", fd))
    return out
