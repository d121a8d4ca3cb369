"""A tiny pod for the lab: answers every TCP connection and UDP datagram with its own address.

``python -m svcdns.testing.podserver --proto tcp --port 8080`` prints ``listening`` once bound (``--proto
http``: a web server whose page names the pod, for curl). TCP clients
get ``<local address>\\n`` and, if they keep the connection open and send lines, each line echoed
back (so a test can hold a long-lived connection through a sync or a restart). UDP datagrams are
answered with the local address. ``python -m svcdns.testing.podserver --client VIP PORT`` is the matching
client: prints what the server answered, exit 1 on failure.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading


def _serve_tcp(sock: socket.socket) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_tcp_conn, args=(conn,), daemon=True).start()


def _tcp_conn(conn: socket.socket) -> None:
    with conn:
        local = conn.getsockname()[0]
        try:
            conn.sendall(f"{local}\n".encode())
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                conn.sendall(data)
        except OSError:
            return


def _serve_udp(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(4096)
        # answer from the address the datagram was sent to (the pod's own)
        sock.sendto(f"{_local_for(peer, sock)}\n".encode(), peer)


def _local_for(peer, sock: socket.socket) -> str:
    fam = sock.family
    probe = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        probe.connect(peer[:2])
        return probe.getsockname()[0]
    finally:
        probe.close()


def _serve_http(listen: str, port: int) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            body = f"hello from pod {self.connection.getsockname()[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in listen else socket.AF_INET
        daemon_threads = True

    server = Server((listen, port), Handler)
    print("listening", flush=True)
    server.serve_forever()


def serve(proto: str, listen: str, port: int) -> None:
    fam = socket.AF_INET6 if ":" in listen else socket.AF_INET
    if proto == "http":
        _serve_http(listen, port)
    elif proto in ("tcp", "sctp"):
        ipproto = socket.IPPROTO_SCTP if proto == "sctp" else 0
        sock = socket.socket(fam, socket.SOCK_STREAM, ipproto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((listen, port))
        sock.listen(512)
        print("listening", flush=True)
        _serve_tcp(sock)
    else:
        sock = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((listen, port))
        print("listening", flush=True)
        _serve_udp(sock)


def ask(host: str, port: int, proto: str = "tcp", timeout: float = 2.0, source_port: int = 0) -> str:
    """Connect (or send a datagram) to ``host:port`` and return the server's answer, stripped."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    if proto in ("tcp", "sctp"):
        ipproto = socket.IPPROTO_SCTP if proto == "sctp" else 0
        with socket.socket(fam, socket.SOCK_STREAM, ipproto) as s:
            s.settimeout(timeout)
            if source_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", source_port))
            s.connect((host, port))
            return _readline(s)
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        if source_port:
            s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", source_port))
        s.connect((host, port))  # connected: an ICMP port unreachable then surfaces as "refused"
        s.send(b"?")
        return s.recv(4096).decode().strip()


def _readline(s: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode().strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="svcdns.testing.podserver")
    p.add_argument("--proto", choices=("tcp", "udp", "sctp", "http"), default="tcp")
    p.add_argument("--listen", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--client", nargs=2, metavar=("HOST", "PORT"), help="ask a server instead of being one")
    p.add_argument("--count", type=int, default=1, help="with --client: how many times to ask")
    p.add_argument("--timeout", type=float, default=2.0)
    args = p.parse_args(argv)
    if args.client:
        failures = 0
        for _ in range(args.count):
            try:
                print(ask(args.client[0], int(args.client[1]), args.proto, args.timeout), flush=True)
            except OSError as err:
                print(f"error: {err}", flush=True)
                failures += 1
        return 1 if failures else 0
    serve(args.proto, args.listen, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
