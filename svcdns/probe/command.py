"""``exec`` probes: a command that passes when it exits 0, run inside the pod's network namespace when
the pod names one (``netns``), else in the agent's own.

The command runs as a child of the agent (asyncio subprocess: the prober's loop never blocks), with
stdin, stdout and the working directory closed off (``/dev/null``, ``/``) and a clean environment
(``PATH`` alone: the agent's environment may hold a registry password). It enters the namespace
through ``nsenter --net=`` on a descriptor the agent opened and checked itself, so a missing path, or
a path that is no network namespace, is named as such. ``setns`` in a ``preexec_fn`` would be the
other way, and is unsafe in a process with threads (the agent has several). The child leads a
session of its own, so a timeout kills it and whatever it started.

Every outcome is a :class:`Result`: no such namespace, a program that is not found or not
executable, a non-zero exit (``exit status 1``), a signal, a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess

from .result import Result

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NS_GET_NSTYPE = 0xB703  # linux/nsfs.h: the kind of namespace a descriptor refers to
CLONE_NEWNET = 0x40000000  # linux/sched.h (os.CLONE_NEWNET from Python 3.12)
STDERR_KEPT = 1024  # of nsenter's own complaint; the command's output is read and dropped


async def run_command(command: tuple[str, ...], netns: str, timeout: float) -> Result:
    """Run ``command`` (in ``netns`` when given) and wait at most ``timeout`` seconds for its exit."""
    program = _program(command[0])
    if isinstance(program, Result):
        return program
    fd = -1
    argv = [program, *command[1:]]
    if netns:
        nsenter = shutil.which("nsenter", path=PATH)
        if nsenter is None:
            return Result(False, "exec: nsenter (util-linux) is not installed: cannot enter the pod's netns")
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            return Result(False, f"no such network namespace: {netns}" if isinstance(err, FileNotFoundError)
                          else f"netns {netns}: {_lower(err.strerror or str(err))}")  # fmt: skip
        if not _is_netns(fd):
            os.close(fd)
            return Result(False, f"not a network namespace: {netns}")
        argv = [nsenter, f"--net=/proc/self/fd/{fd}", "--", *argv]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE if fd >= 0 else subprocess.DEVNULL,
            env={"PATH": PATH}, cwd="/", start_new_session=True, pass_fds=(fd,) if fd >= 0 else ())  # fmt: skip
    except OSError as err:
        return Result(False, f"exec: {command[0]}: {_lower(err.strerror or str(err))}")
    finally:
        if fd >= 0:
            os.close(fd)
    try:
        async with asyncio.timeout(timeout):
            stderr = await _drain(proc.stderr) if proc.stderr is not None else b""
            code = await proc.wait()
    except TimeoutError:
        return Result(False, f"timeout after {timeout:g} s", timed_out=True)
    finally:
        if proc.returncode is None:  # a timeout, or the prober cancelled the probe
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the asyncio child watcher reaps it
    if code == 0:
        return Result(True)
    first = stderr.decode(errors="replace").partition("\n")[0].strip()
    if first.startswith("nsenter: "):  # it could not enter the namespace or start the program
        return Result(False, f"exec: {first}")
    if code < 0:
        return Result(False, f"killed by {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"killed by signal {-code}")
    return Result(False, f"exit status {code}")


def _program(name: str) -> str | Result:
    """The file ``name`` runs (looked up in :data:`PATH` when it has no '/'), or why it cannot run.
    Looked up here, in the agent's mount namespace, which is the command's: ``nsenter --net`` changes
    only the network namespace."""
    path = name if "/" in name else shutil.which(name, path=PATH)
    if path is None or not os.path.exists(path):
        return Result(False, f"exec: {name}: command not found")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        return Result(False, f"exec: {name}: not executable")
    return path


def _is_netns(fd: int) -> bool:
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:  # ENOTTY: not a namespace file at all
        return False


async def _drain(stream: asyncio.StreamReader) -> bytes:
    """Read ``stream`` to its end, keeping its first :data:`STDERR_KEPT` bytes (a command that writes
    without end must not block on a full pipe, nor fill the agent's memory)."""
    kept = b""
    while chunk := await stream.read(65536):
        if len(kept) < STDERR_KEPT:
            kept += chunk[: STDERR_KEPT - len(kept)]
    return kept


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


__all__ = ["run_command"]
