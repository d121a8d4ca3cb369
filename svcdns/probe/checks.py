"""The probe kinds. ``tcpSocket``, ``httpGet`` and ``grpc`` connect from the agent's network namespace
(the node's, as the kubelet probes): ``tcpSocket`` passes when a connection to the pod's address is
accepted, ``httpGet`` when the answer's status is 200 to 399 (a redirect is not followed: it passes,
as in Kubernetes; HTTPS does not verify the certificate, neither does the kubelet), ``grpc`` when the
health service says SERVING (:mod:`.grpchealth`). ``exec`` runs a command in the pod's netns
(:mod:`.command`).

A connection refused, reset or unroutable fails at once, with the kernel's reason; only a target that
does not answer waits for ``timeoutSeconds``. Every outcome is a :class:`Result`, never an exception:
a probe that cannot run is a failing probe with that reason.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl

from ..addr import format_hostport
from ..pod import Pod, Probe
from .command import run_command
from .result import Result

USER_AGENT = "svcdns-probe/1"
MAX_STATUS_LINE = 4096


async def check(pod: Pod, probe: Probe) -> Result:
    """Run ``probe`` (one of ``pod``'s readiness probes) once, within its timeout."""
    if probe.kind == "exec":
        return await run_command(probe.command, pod.netns, probe.timeout)
    if not pod.ips:
        return Result(False, "the pod has no address")
    return await probe_at(probe, str(pod.ips[0]), pod.probe_port(probe))


async def probe_at(probe: Probe, host: str, port: int) -> Result:
    """Run ``probe`` (not exec) against ``host``:``port`` once, within its timeout."""
    if probe.kind == "grpc":
        from .grpchealth import check_health  # grpc is heavy: imported by the first gRPC probe

        return await check_health(host, port, probe.service, probe.timeout)
    try:
        async with asyncio.timeout(probe.timeout):
            if probe.kind == "tcpSocket":
                await _connect(host, port)
                return Result(True)
            return await _http_get(probe, host, port)
    except TimeoutError:
        return Result(False, f"timeout after {probe.timeout} s", timed_out=True)
    except ssl.SSLError as err:
        return Result(False, f"TLS: {err.reason or err}")
    except OSError as err:
        # asyncio's connect error says "Connect call failed (addr)"; the errno says why
        # asyncio's stream reports a reset met while writing as ConnectionResetError("Connection
        # lost"), without an errno: it is the peer's reset all the same
        code = err.errno or (errno.ECONNRESET if isinstance(err, ConnectionResetError) else 0)
        reason = os.strerror(code) if code else str(err) or type(err).__name__
        return Result(False, reason[:1].lower() + reason[1:])


async def _connect(host: str, port: int) -> None:
    """Connect and close, on a bare non-blocking socket: asyncio's streams would build a transport and
    a protocol the probe never uses (10k pods: 1,000 connections a second)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    finally:
        sock.close()


async def _http_get(probe: Probe, host: str, port: int) -> Result:
    tls = None
    if probe.scheme == "HTTPS":
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    try:
        headers = {"host": ("Host", format_hostport(host, port)), "user-agent": ("User-Agent", USER_AGENT),
                   "accept": ("Accept", "*/*")}  # fmt: skip
        headers.update({name.lower(): (name, value) for name, value in probe.http_headers})  # theirs win, as kubelet's
        headers["connection"] = ("Connection", "close")
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.values())
        writer.write(f"GET {probe.path} HTTP/1.1\r\n{head}\r\n".encode("latin-1"))
        await writer.drain()
        line = await reader.readuntil(b"\n") if not reader.at_eof() else b""
    except asyncio.IncompleteReadError as err:
        line = err.partial
    except asyncio.LimitOverrunError:
        return Result(False, "HTTP: the status line is too long")
    finally:
        writer.close()
    parts = line[:MAX_STATUS_LINE].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return Result(False, "HTTP: no status line" if not line else f"HTTP: not a status line: {line[:60]!r}")
    status = int(parts[1])
    return Result(True) if 200 <= status < 400 else Result(False, f"HTTP {status}")


__all__ = ["Result", "check", "probe_at"]
