"""UDP in batches: ``recvmmsg(2)`` and ``sendmmsg(2)`` through ctypes.

Per query, the kernel's system call entry and exit cost about as much as the whole Python fast path,
so a busy worker takes up to :data:`BATCH` queries with one call and sends their answers with one
more. The buffers are allocated once per socket and read through memoryviews: apart from the query's
bytes (the cache key) and the client's address bytes, nothing is allocated per packet.

Slot ``i`` of :attr:`Batch.buf` (at ``i * STRIDE``) holds the sender's sockaddr in its first
:data:`NAME` bytes and the datagram from :data:`NAME` on. The answer to datagram ``i`` is written
over it, in place (an answer starts with its query's ID, so only the rest is copied), and message
``i`` of the send vector points at that slot and at the same sockaddr: the sender's address is never
decoded on the fast path.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct

BATCH = 64  # datagrams per system call
NAME = 32  # room for a sockaddr_in6 (28 bytes), rounded up
QUERY = 4096  # a larger UDP query is cut here and answered FORMERR (MSG_TRUNC); a larger answer is sent alone
STRIDE = NAME + QUERY
MSG_TRUNC = 0x20
MSG_WAITFORONE = 0x10000

_PORT = struct.Struct("!H")
_PORT_FLOW = struct.Struct("!HI")
_SCOPE = struct.Struct("=I")  # host byte order

_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]  # fmt: skip


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint32)]


_WORDS = ctypes.sizeof(_Mmsghdr) // 4  # a message's header in Batch.meta: 16 words on 64-bit Linux
_LEN_WORD = _Mmsghdr.len.offset // 4  # its datagram's length
_FLAGS_WORD = (_Mmsghdr.hdr.offset + _Msghdr.flags.offset) // 4  # MSG_TRUNC when cut at QUERY bytes


class Batch:
    """The receive and send buffers of one UDP socket; see the module docstring for the layout."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        v6 = sock.family == socket.AF_INET6
        namelen = 28 if v6 else 16
        self.addr = (8, 24) if v6 else (4, 8)  # where the address bytes lie inside a sockaddr
        self.buf = bytearray(STRIDE * BATCH)
        self.view = memoryview(self.buf)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        self._riov, self._siov = (_Iovec * BATCH)(), (_Iovec * BATCH)()
        self._rmsg, self._smsg = (_Mmsghdr * BATCH)(), (_Mmsghdr * BATCH)()
        for i in range(BATCH):
            self._riov[i].base = self._siov[i].base = base + i * STRIDE + NAME
            self._riov[i].len = QUERY
            for msgs, iov in ((self._rmsg, self._riov), (self._smsg, self._siov)):
                h = msgs[i].hdr
                h.name, h.namelen, h.iov, h.iovlen = base + i * STRIDE, namelen, ctypes.addressof(iov[i]), 1
        self._rmsg_p, self._smsg_p = ctypes.addressof(self._rmsg), ctypes.addressof(self._smsg)
        self.meta = memoryview(self._rmsg).cast("B").cast("I")  # [i * _WORDS + _LEN_WORD]: datagram i's length
        raw = memoryview(self._siov).cast("B")
        self.out_len = (
            raw.cast("Q") if ctypes.sizeof(ctypes.c_size_t) == 8 else raw.cast("I")
        )  # [i * 2 + 1]: answer i's length
        a0, a1 = self.addr
        # per slot, the offsets the hot loop needs: (i, address start and end, datagram, length word, answer length word)
        self.slots = [(i, i * STRIDE + a0, i * STRIDE + a1, i * STRIDE + NAME, i * _WORDS + _LEN_WORD, i * 2 + 1)
                      for i in range(BATCH)]  # fmt: skip

    def recv(self) -> int:
        """Take the queued datagrams (up to BATCH, without waiting for more than one); 0 if none."""
        while True:
            n = _recvmmsg(self.fd, self._rmsg_p, BATCH, MSG_WAITFORONE, None)
            if n >= 0:
                return n
            if ctypes.get_errno() != errno.EINTR:
                return 0  # EAGAIN: drained (an error on a datagram socket is reported by its next call)

    def datagram(self, i: int) -> bytes:
        at = i * STRIDE + NAME
        return self.view[at : at + self.meta[i * _WORDS + _LEN_WORD]].tobytes()

    def address(self, i: int) -> bytes:
        """Datagram ``i``'s sender's address bytes (the key the hot loop reads the same way)."""
        return self.view[i * STRIDE + self.addr[0] : i * STRIDE + self.addr[1]].tobytes()

    def truncated(self, i: int) -> bool:
        """Datagram ``i`` was longer than QUERY bytes (only its start is in the buffer)."""
        return bool(self.meta[i * _WORDS + _FLAGS_WORD] & MSG_TRUNC)

    def client(self, i: int) -> tuple:
        """Datagram ``i``'s sender as ``socket.sendto`` takes it."""
        at = i * STRIDE
        host = socket.inet_ntop(self.family, self.address(i))
        if self.family == socket.AF_INET6:  # sockaddr_in6: family, port, flowinfo, address, scope id
            return host, *_PORT_FLOW.unpack_from(self.buf, at + 2), _SCOPE.unpack_from(self.buf, at + 24)[0]
        return host, _PORT.unpack_from(self.buf, at + 2)[0]

    def place(self, i: int, answer: bytes) -> None:
        """Write ``answer`` (at most QUERY bytes) over datagram ``i``, for :meth:`send`."""
        at = i * STRIDE + NAME
        self.buf[at : at + len(answer)] = answer
        self.out_len[i * 2 + 1] = len(answer)

    def send(self, start: int, stop: int) -> int:
        """Send answers ``start .. stop-1``; one the kernel refuses is skipped. Returns how many went."""
        sent, done = 0, start
        while done < stop:
            n = _sendmmsg(self.fd, self._smsg_p + done * ctypes.sizeof(_Mmsghdr), stop - done, 0)
            if n > 0:
                done += n
                sent += n
            elif n < 0 and ctypes.get_errno() == errno.EINTR:
                continue
            else:
                done += 1  # this one's error (a full buffer, an unreachable client): drop it, as sendto would
        return sent


__all__ = ["Batch", "BATCH", "NAME", "QUERY", "STRIDE"]
