"""Every kernel shell of the dataplane turns what pyroute2 and the OS raise into DataplaneError with
the errno (layout issue 11, defect 2), without root: the sockets are fakes, nothing reaches a kernel."""

import errno
import struct
import subprocess

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from svcdns.dataplane import DataplaneError, conntrack, open_dataplane
from svcdns.dataplane.footprint import Footprint
from svcdns.dataplane.iptables import backend as iptables
from svcdns.dataplane.nftables import backend as nft_backend
from svcdns.dataplane.nftables import netlink
from svcdns.dataplane.nftables.encode import encode
from svcdns.dataplane.nftables.ruleset import build, plan
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.table import ServiceTable

TABLE = ServiceTable.of([Service("web", ports=(ServicePort(53, "UDP"),), cluster_ips=("10.96.0.10",),
                                 endpoints=(Endpoint("10.244.1.2"),))])  # fmt: skip


class FakeNetlinkSocket:
    """Answers every request or acknowledged message with an NLMSG_ERROR carrying ``code``."""

    def __init__(self, code=0, fail_send=None, fail_recv=None):
        self.code, self.fail_send, self.fail_recv, self.replies = code, fail_send, fail_recv, []

    def __call__(self, *args):  # stands in for the socket class
        return self

    def bind(self, addr):
        pass

    def setsockopt(self, *args):
        pass

    def close(self):
        pass

    def send(self, data):
        if self.fail_send:
            raise self.fail_send
        offset = 0
        while offset < len(data):
            length, mtype, flags, seq, _ = struct.unpack_from("=IHHII", data, offset)
            if flags & 0x4 or mtype in [(10 << 8) | m for m in (netlink.NFT_MSG_GETGEN, netlink.NFT_MSG_GETTABLE)]:
                self.replies.append(
                    struct.pack("=IHHII", 36, 2, 0, seq, 0) + struct.pack("=i", -self.code) + data[offset : offset + 16]
                )
            offset += (length + 3) & ~3
        return len(data)

    def recv(self, size):
        if self.fail_recv:
            raise self.fail_recv
        return self.replies.pop(0)


@pytest.fixture
def kernel(monkeypatch):
    """A fake netlink socket in place of the kernel's; the namespace guard waved through (no real
    socket is ever opened)."""

    def install(**kw):
        fake = FakeNetlinkSocket(**kw)
        monkeypatch.setattr(netlink.socket, "socket", fake)
        return fake

    monkeypatch.setattr(netlink, "check_netns_guard", lambda what: None)
    return install


def test_a_refused_batch_carries_the_kernels_errno_and_the_message(kernel):
    kernel(code=errno.ENOENT)
    messages = encode(plan(build(TABLE)))
    batch = netlink.NetlinkBatch()
    with pytest.raises(DataplaneError) as err:
        batch.send(messages)
    assert err.value.is_not_found() and messages[-1].what in str(err.value)


def test_a_socket_that_cannot_be_opened(kernel):
    kernel()

    def refuse(*args):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    netlink.socket.socket = refuse  # restored by the fixture's monkeypatch
    with pytest.raises(DataplaneError) as err:
        netlink.NetlinkBatch()
    assert err.value.errno == errno.EPERM and "netlink socket" in str(err.value)


@pytest.mark.parametrize("failure", ["send", "recv"])
def test_the_footprint_record_and_read(kernel, failure):
    kernel(**{f"fail_{failure}": OSError(errno.ENOBUFS, "No buffer space available")})
    fp = Footprint([("ip", "svcdns")])
    with pytest.raises(DataplaneError) as err:
        fp.record()
    assert err.value.errno == errno.ENOBUFS
    fp.generation, fp.handles = 1, {("ip", "svcdns"): 1}  # as after a commit: the checks must ask
    with pytest.raises(DataplaneError):
        fp.drifted()


def test_a_missing_table_is_not_found_for_delete_table(kernel):
    kernel(code=errno.ENOENT)
    assert netlink.delete_table("ip") is False
    kernel(code=errno.EPERM)
    with pytest.raises(DataplaneError) as err:
        netlink.delete_table("ip")
    assert err.value.errno == errno.EPERM


def test_present_converts_pyroute2s_error(monkeypatch):
    def refuse(**kw):
        raise NetlinkError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(netlink, "check_netns_guard", lambda what: None)
    monkeypatch.setattr(netlink, "NFTSocket", refuse)
    with pytest.raises(DataplaneError) as err:
        netlink.present("ip")
    assert err.value.errno == errno.EPERM and "table ip svcdns" in str(err.value)


def test_the_nftables_sync_keeps_the_errno(kernel, monkeypatch):
    kernel(code=errno.EINVAL)
    monkeypatch.setattr(nft_backend, "present", lambda family: (set(), set()))
    with pytest.raises(DataplaneError, match="nftables refused the ip sync.*previous rules stay") as err:
        open_dataplane("nftables", families=("IPv4",)).sync(TABLE)
    assert err.value.errno == errno.EINVAL


class FakeConntrack:
    def __init__(self, delete_error=None):
        self.delete_error = delete_error

    def __call__(self):
        return self

    def dump_entries(self, tuple_orig):
        class T:
            def __init__(self, daddr, dport, saddr=None, sport=None):
                self.daddr, self.dport, self.saddr, self.sport = daddr, dport, saddr, sport

        class E:
            tuple_orig = T("10.96.0.10", 53)
            tuple_reply = T(None, None, "10.244.9.9", 53)  # an endpoint that went

        return [E()] if tuple_orig.family == 2 else []

    def delete(self, entry):
        if self.delete_error:
            raise self.delete_error

    def close(self):
        pass


@pytest.fixture
def ct(monkeypatch):
    monkeypatch.setattr(conntrack, "check_netns_guard", lambda what: None)

    def install(fake):
        monkeypatch.setattr(conntrack, "Conntrack", fake)

    return install


def test_conntrack_that_cannot_be_opened(ct):
    def refuse():
        raise NetlinkError(errno.EPERM)

    ct(refuse)
    with pytest.raises(DataplaneError) as err:
        conntrack.clear_udp({("10.96.0.10", 53): {("10.244.1.2", 53)}})
    assert err.value.errno == errno.EPERM and "conntrack" in str(err.value)


def test_a_conntrack_entry_gone_meanwhile_is_no_failure_and_others_are(ct):
    ct(FakeConntrack(NetlinkError(errno.ENOENT)))
    assert conntrack.clear_udp({("10.96.0.10", 53): {("10.244.1.2", 53)}}) == 0
    ct(FakeConntrack(NetlinkError(errno.EPERM)))
    with pytest.raises(DataplaneError) as err:
        conntrack.clear_udp({("10.96.0.10", 53): {("10.244.1.2", 53)}})
    assert err.value.errno == errno.EPERM
    ct(FakeConntrack())
    assert conntrack.clear_udp({("10.96.0.10", 53): {("10.244.1.2", 53)}}) == 1


def test_iptables_that_cannot_run_keeps_the_errno(monkeypatch):
    def refuse(argv, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", argv[0])

    monkeypatch.setattr(iptables.subprocess, "run", refuse)
    monkeypatch.setattr(iptables, "check_netns_guard", lambda what: None)
    with pytest.raises(DataplaneError) as err:
        open_dataplane("iptables", families=("IPv4",)).sync(TABLE)
    assert err.value.errno == errno.EACCES


def test_a_refused_iptables_restore_is_a_dataplane_error(monkeypatch):
    def run(argv, input=None, **kw):
        if argv[0].endswith("-save"):
            return subprocess.CompletedProcess(argv, 0, f"*{argv[2]}\nCOMMIT\n", "")
        return subprocess.CompletedProcess(argv, 1, "", "iptables-restore: line 3 failed\n")

    monkeypatch.setattr(iptables.subprocess, "run", run)
    monkeypatch.setattr(iptables, "check_netns_guard", lambda what: None)
    monkeypatch.setattr(iptables, "_nft_backed", lambda: False)
    with pytest.raises(DataplaneError, match="iptables-restore refused the nat table.*line 3 failed"):
        open_dataplane("iptables", families=("IPv4",)).sync(TABLE)
