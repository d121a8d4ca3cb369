"""One agent per network namespace: a lock held for the agent's life.

Two agents in one namespace would share the DNS port through SO_REUSEPORT (each answering from its
own zone) and rewrite each other's tables. The lock is ``flock`` on a file named after the
namespace (its inode), so agents in other namespaces (the tests' labs, containers) do not collide,
and the kernel releases it when the process dies, however it dies: no stale lock after a crash.
"""

from __future__ import annotations

import fcntl
import os

from ..errors import SvcdnsError

RUN_DIR = "/run/svcdns"  # systemd's RuntimeDirectory=svcdns


class AgentLock:
    def __init__(self, run_dir: str | None = None) -> None:
        self.run_dir = run_dir or os.environ.get("SVCDNS_RUN_DIR") or RUN_DIR
        inode = os.stat("/proc/self/ns/net").st_ino
        self.path = os.path.join(self.run_dir, f"agent-netns-{inode}.lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise SvcdnsError naming the agent that holds it."""
        try:
            os.makedirs(self.run_dir, mode=0o755, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise SvcdnsError(f"cannot create the agent's lock {self.path}: {err.strerror or err} "
                              "(set SVCDNS_RUN_DIR to a writable directory)") from None  # fmt: skip
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SvcdnsError(
                f"another svcdns agent (PID {holder}) already runs in this network namespace "
                f"(lock {self.path}); stop it first, or run this one in another namespace"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the file stays: removing it would race a starting agent
            self.fd = None

    def __enter__(self) -> AgentLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["AgentLock"]
