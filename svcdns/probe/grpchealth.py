"""``grpc`` probes: the standard gRPC health service (``grpc.health.v1.Health/Check``) answers
SERVING for the probe's ``service`` ("" asks about the server as a whole), as the kubelet's gRPC probe.

One channel per probe, closed after it (the kubelet's probe connects afresh too, so a probe says
whether a new client could be served); no proxy from the environment, no retries, no waiting for
the channel to be ready: a refused connection fails at once, and the deadline is ``timeoutSeconds``.
The protos come from ``grpcio-health-checking``; grpc.aio runs on the prober's own loop.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..addr import format_hostport
from .result import Result

_OPTIONS = (("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.primary_user_agent", "svcdns-probe/1"))  # fmt: skip
_STATUS = health_pb2.HealthCheckResponse.ServingStatus


async def check_health(host: str, port: int, service: str, timeout: float) -> Result:
    """One Check call to ``host``:``port`` within ``timeout`` seconds."""
    target = format_hostport(host, port)
    try:
        async with grpc.aio.insecure_channel(target, options=_OPTIONS) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.aio.AioRpcError as err:
        return _failure(err, service, timeout)
    if reply.status == _STATUS.SERVING:
        return Result(True)
    return Result(False, f"gRPC {_STATUS.Name(reply.status)}")


def _failure(err: grpc.aio.AioRpcError, service: str, timeout: float) -> Result:
    code, details = err.code(), err.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Result(False, f"timeout after {timeout:g} s", timed_out=True)
    if code == grpc.StatusCode.UNAVAILABLE:
        # the transport's reason ("... Connection refused"), without the addresses and timings it quotes
        for known in ("Connection refused", "Connection reset by peer", "No route to host", "Network is unreachable",
                      "Socket closed"):  # fmt: skip
            if known.lower() in details.lower():
                return Result(False, known[:1].lower() + known[1:])
        return Result(False, "gRPC UNAVAILABLE")
    if code == grpc.StatusCode.NOT_FOUND:
        return Result(False, f"gRPC: the health service does not know service {service!r}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Result(False, "gRPC: the server has no health service (grpc.health.v1.Health)")
    return Result(False, f"gRPC {code.name}")


__all__ = ["check_health"]
