"""The UDP batch shell (recvmmsg/sendmmsg) on loopback sockets: no root needed, no packet leaves
the loopback interface."""

import select
import socket

import pytest

from svcdns.dns.mmsg import BATCH, NAME, STRIDE, Batch


def pair(family: int, host: str):
    try:
        server = socket.socket(family, socket.SOCK_DGRAM)
        server.bind((host, 0))
    except OSError as exc:
        pytest.skip(f"no {host} on this machine: {exc}")
    server.setblocking(False)
    clients = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    for c in clients:
        c.bind((host, 0))
        c.settimeout(2)
    return server, clients


def received(batch: Batch) -> int:
    """One batch, once the first datagram is there (loopback queues a datagram before sendto returns)."""
    select.select([batch.sock], [], [], 2)
    return batch.recv()


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_a_batch_reads_every_sender_and_answers_each_in_place(family, host):
    server, clients = pair(family, host)
    batch = Batch(server)
    for n, c in enumerate(clients):
        c.sendto(bytes([n]) * (10 + n), server.getsockname())
    assert received(batch) == 3
    for i in range(3):
        sender = batch.client(i)
        n = [c.getsockname()[1] for c in clients].index(sender[1])
        assert sender[0] == host and len(batch.datagram(i)) == 10 + n and not batch.truncated(i)
        at = i * STRIDE + NAME
        assert batch.buf[at : at + 10 + n] == bytes([n]) * (10 + n)
        batch.buf[at : at + 5] = b"reply"  # the answer, written over the query
        batch.out_len[i * 2 + 1] = 5 + n
    assert batch.send(0, 3) == 3
    for n, c in enumerate(clients):
        assert c.recv(100) == b"reply" + bytes([n]) * n  # its own answer, at the length given
    assert batch.recv() == 0  # drained: no waiting


def test_a_datagram_longer_than_a_slot_is_marked_truncated():
    server, (client, *_) = pair(socket.AF_INET, "127.0.0.1")
    batch = Batch(server)
    client.sendto(b"\x12\x34" + bytes(5000), server.getsockname())
    assert received(batch) == 1
    assert batch.truncated(0) and batch.buf[NAME : NAME + 2] == b"\x12\x34"


def test_more_datagrams_than_a_batch_come_in_several():
    server, (client, *_) = pair(socket.AF_INET, "127.0.0.1")
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    batch = Batch(server)
    for n in range(BATCH + 10):
        client.sendto(n.to_bytes(2, "big"), server.getsockname())
    first = received(batch)
    seen = [int.from_bytes(batch.buf[i * STRIDE + NAME : i * STRIDE + NAME + 2], "big") for i in range(first)]
    second = batch.recv()
    seen += [int.from_bytes(batch.buf[i * STRIDE + NAME : i * STRIDE + NAME + 2], "big") for i in range(second)]
    assert first == BATCH and seen == list(range(BATCH + 10))
