"""The nftables backend keeps one netlink socket for its syncs and its drift and loss checks (closing
one right after a commit makes the kernel wait for an RCU grace period, ~10 ms a sync), and drops it
after a failure. Without root: the socket is a fake that answers like the kernel."""

import errno
import struct

import pytest

from svcdns.dataplane import DataplaneError, open_dataplane
from svcdns.dataplane.nftables import backend as nft_backend
from svcdns.dataplane.nftables import netlink
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.table import ServiceTable

TABLE = ServiceTable.of([Service("web", ports=(ServicePort(80),), cluster_ips=("10.96.0.10",),
                                 endpoints=(Endpoint("10.244.1.2"),))])  # fmt: skip
GETGEN, GETTABLE, GETRULE, NEWRULE = ((10 << 8) | m for m in (netlink.NFT_MSG_GETGEN, netlink.NFT_MSG_GETTABLE,
                                                                netlink.NFT_MSG_GETRULE, netlink.NFT_MSG_NEWRULE))


class FakeKernel:
    """Acknowledges batches (refusing them with ``refuse`` when set), moves the generation at each,
    keeps the last rule added to the commit chain, and answers GETGEN, GETTABLE and the dump of
    that chain; counts the sockets opened and closed."""

    def __init__(self):
        self.opened = self.closed = 0
        self.generation, self.refuse = 1, 0
        self.mark = b""  # the commit chain's rule, as the last batch wrote it

    def __call__(self, *args):  # stands in for the socket class
        self.opened += 1
        return Socket(self)


class Socket:
    def __init__(self, kernel):
        self.kernel, self.replies = kernel, []

    def bind(self, addr):
        pass

    def setsockopt(self, *args):
        pass

    def close(self):
        self.kernel.closed += 1

    def send(self, data):
        offset = 0
        while offset < len(data):
            length, mtype, flags, seq, _ = struct.unpack_from("=IHHII", data, offset)
            if mtype == netlink.BATCH_END and not self.kernel.refuse:
                self.kernel.generation += 1
            if mtype == NEWRULE and b"commit\0" in data[offset + 20 : offset + length]:
                self.kernel.mark = data[offset + 20 : offset + length]
            if flags & netlink.NLM_F_ACK:
                code = -self.kernel.refuse
                self.replies.append(
                    struct.pack("=IHHII", 36, 2, 0, seq, 0) + struct.pack("=i", code) + data[offset : offset + 16]
                )
            elif mtype == GETRULE:
                body = struct.pack("!BBH", 2, 0, self.kernel.generation) + self.kernel.mark
                self.replies.append(struct.pack("=IHHII", 16 + len(body), NEWRULE, 2, seq, 0) + body)
                self.replies.append(struct.pack("=IHHII", 20, netlink.NLMSG_DONE, 2, seq, 0) + b"\0" * 4)
            elif mtype in (GETGEN, GETTABLE):
                attr = netlink.nla("NFTA_GEN_ID", struct.pack("!I", self.kernel.generation)) if mtype == GETGEN \
                    else netlink.nla("NFTA_TABLE_HANDLE", struct.pack("!Q", 7))  # fmt: skip
                body = struct.pack("!BBH", 2, 0, 0) + attr
                self.replies.append(struct.pack("=IHHII", 16 + len(body), mtype, 0, seq, 0) + body)
            offset += (length + 3) & ~3
        return len(data)

    def recv(self, size):
        return self.replies.pop(0)


@pytest.fixture
def kernel(monkeypatch):
    fake = FakeKernel()
    monkeypatch.setattr(netlink.socket, "socket", fake)
    monkeypatch.setattr(netlink, "check_netns_guard", lambda what: None)
    monkeypatch.setattr(nft_backend, "present", lambda family: (set(), set()))
    return fake


def test_syncs_and_checks_share_one_socket(kernel):
    dp = open_dataplane("nftables", families=("IPv4",))
    dp.sync(TABLE)
    moved = TABLE.replace([TABLE.get("default", "web").with_endpoints((Endpoint("10.244.2.2"),))])
    dp.sync(moved)
    assert not dp.drifted() and not dp.lost()
    assert (kernel.opened, kernel.closed) == (1, 0)
    kernel.generation += 1  # someone else committed
    assert dp.drifted() and not dp.lost()  # same table handle: not lost
    assert kernel.opened == 1


def test_a_table_rewritten_by_another_process_is_lost(kernel, caplog):
    dp = open_dataplane("nftables", families=("IPv4",))
    dp.sync(TABLE)
    ours = kernel.mark
    assert b"svcdns pid" in ours  # the commit chain's comment names us
    kernel.generation += 1  # someone else committed, and left our commit mark: not lost
    assert not dp.lost()
    kernel.mark, kernel.generation = ours.replace(b"commit 1", b"commit 9"), kernel.generation + 1  # a second agent's
    assert dp.lost()
    assert "rewritten by another process" in caplog.text
    dp.sync(TABLE, full=True)  # put back: the mark is ours again
    assert not dp.lost() and kernel.mark != ours


def test_a_failed_sync_drops_the_socket_and_the_next_opens_another(kernel):
    dp = open_dataplane("nftables", families=("IPv4",))
    dp.sync(TABLE)
    kernel.refuse = errno.EINVAL
    with pytest.raises(DataplaneError):
        dp.sync(TABLE, full=True)
    assert (kernel.opened, kernel.closed) == (1, 1)
    kernel.refuse = 0
    dp.sync(TABLE, full=True)
    assert (kernel.opened, kernel.closed) == (2, 1)
