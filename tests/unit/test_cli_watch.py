"""`service list -w` and `pod list -w` against the file registry: the table, then a line per change,
until Ctrl-C (exit 0, nothing said); a reader that goes away ends it quietly too."""

import io
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from svcdns.cli import main
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.pod import Pod
from svcdns.registry import open_registry
from svcdns.registry.files import FileRegistry

DEADLINE = 15.0


class Lines(io.TextIOBase):
    """A stdout whose lines another thread can wait for."""

    def __init__(self):
        self.text, self.cond = "", threading.Condition()

    def write(self, s):
        with self.cond:
            self.text += s
            self.cond.notify_all()
        return len(s)

    def lines(self):
        return self.text.splitlines()

    def wait_for(self, predicate):
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.lines()), timeout=DEADLINE)


def watching(monkeypatch, argv, steps):
    """Run ``svcdns *argv`` in this thread; ``steps`` (a list of (change, expected line test)) run in
    another, each waiting for its line; then Ctrl-C. Returns (exit code, lines, steps that timed out)."""
    out = Lines()
    monkeypatch.setattr(sys, "stdout", out)
    missed = []

    def drive():
        try:
            out.wait_for(lambda lines: len(lines) >= 1)
            for change, seen in steps:
                change()
                if not out.wait_for(seen):
                    missed.append(change)
                    break
        finally:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    # Ctrl-C must raise KeyboardInterrupt whatever this process inherited: a shell starting a job in
    # the background (`bash .ci/run &`) leaves SIGINT ignored, and the watch then never ended
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    helper = threading.Thread(target=drive)
    helper.start()
    try:
        code = main(argv)
    finally:
        helper.join()
        signal.signal(signal.SIGINT, previous)
    return code, out.lines(), missed


def test_service_list_watch_prints_a_line_per_change(svcdns, monkeypatch):
    reg = FileRegistry(svcdns.root)
    reg.create(Service("old", ports=(ServicePort(80),)))
    web = Service("web", ports=(ServicePort(80),))
    steps = [
        (lambda: reg.create(web), lambda ls: any(" web " in f" {x} " and "0/0 ready" in x for x in ls)),
        (lambda: reg.update("default", "web", lambda s: s.with_endpoints([Endpoint("10.0.1.5")])),
         lambda ls: any("web" in x and "1/1 ready" in x for x in ls)),
        (lambda: reg.delete("default", "old"), lambda ls: any(x.startswith("DELETED") and "old" in x for x in ls)),
    ]
    code, lines, missed = watching(monkeypatch, ["service", "list", "-w", "--output-watch-events"], steps)
    assert code == 0 and not missed, lines
    assert lines[0].split()[:3] == ["EVENT", "NAMESPACE", "NAME"]
    assert lines[1].split()[:3] == ["ADDED", "default", "old"]
    changes = [x.split()[:3] for x in lines[2:]]
    assert changes == [["ADDED", "default", "web"], ["MODIFIED", "default", "web"], ["DELETED", "default", "old"]]


@pytest.mark.parametrize("backend", ["files", "etcd"])
def test_pod_list_watch_sees_pods_no_service_selects(svcdns, monkeypatch, backend, request):
    if backend == "etcd":
        url = request.getfixturevalue("etcd_url")
        monkeypatch.setenv("SVCDNS_REGISTRY", url)
        reg = open_registry(url)
        request.addfinalizer(reg.close)
    else:
        reg = FileRegistry(svcdns.root)
    steps = [
        (lambda: reg.put_pod(Pod("web-0", labels={"app": "web"}, ips=("10.244.0.5",))),
         lambda ls: any("web-0" in x and "Ready" in x for x in ls)),
        (lambda: reg.update_pod("default", "web-0", lambda p: Pod("web-0", ips=p.ips, ready=False)),
         lambda ls: any("web-0" in x and "NotReady" in x for x in ls)),
        (lambda: reg.delete_pod("default", "web-0"), lambda ls: len(ls) >= 4),
    ]
    code, lines, missed = watching(monkeypatch, ["pod", "list", "-w"], steps)
    assert code == 0 and not missed, lines
    assert lines[0].split() == ["NAMESPACE", "NAME", "STATUS", "IP", "REASON"]
    assert [x.split() for x in lines[1:]] == [["default", "web-0", "Ready", "10.244.0.5", "-"],
                                              ["default", "web-0", "NotReady", "10.244.0.5", "-"],
                                              ["default", "web-0", "NotReady", "10.244.0.5", "-"]]  # fmt: skip


def test_watch_refuses_formats_it_cannot_follow(svcdns):
    code, _, err = svcdns("service", "list", "-w", "-o", "json")
    assert code == 2 and "-o json is not watchable" in err


def test_watch_ends_quietly_when_its_reader_goes(tmp_path):
    env = dict(os.environ, SVCDNS_REGISTRY=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", "svcdns", "service", "list", "-w"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout.readline().split()[:2] == [b"NAMESPACE", b"NAME"]
        proc.stdout.close()  # as `| head -1` does
        reg = FileRegistry(tmp_path)
        deadline = time.monotonic() + DEADLINE
        i = 0
        while proc.poll() is None and time.monotonic() < deadline:  # each change makes it write, and fail
            reg.create(Service(f"s{i}", ports=(ServicePort(80),)))
            i += 1
            try:
                proc.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
        assert proc.wait(1) == 0
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
