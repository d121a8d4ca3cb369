"""The systemd unit in a real systemd: a minimal Debian booted with systemd-nspawn, svcdns installed
in it as an operator would, from a wheel into a venv under /opt, and the unit run with all of its
hardening (no relaxing drop-in).

The root file system is debootstrapped once from the mirror this machine's apt sources name, into
/var/cache/svcdns-test/<release>-<hash of the package list> (minutes; kept for later runs), and booted
with ``--volatile=overlay`` (the image stays untouched) and ``--private-network``. The container has
no network, so the wheels (svcdns and its dependencies, built here with pip) are bind-mounted
read-only for its pip.
"""

import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from svcdns.testing.lab import wait_for

CACHE = Path("/var/cache/svcdns-test")
REPO = Path(__file__).resolve().parents[2]
# python3-venv: the container makes its own venv under /opt, as an operator would
PACKAGES = "systemd,systemd-sysv,dbus,iproute2,nftables,dnsutils,python3,python3-venv,ca-certificates,systemd-resolved"

pytestmark = pytest.mark.skipif(
    not (shutil.which("systemd-nspawn") and shutil.which("debootstrap")),
    reason="needs systemd-nspawn and debootstrap (Debian packages systemd-container, debootstrap)",
)


def apt_sources(etc: Path = Path("/etc/apt")) -> list[tuple[str, str]]:
    """The ``(uri, suite)`` pairs of the ``deb`` entries this machine's apt reads, in apt's order:
    ``sources.list`` (one-line format), then ``sources.list.d/*.list`` and ``*.sources`` (deb822)."""
    found: list[tuple[str, str]] = []
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or not (path.name == "sources.list" or path.suffix in (".list", ".sources")):
            continue  # apt itself ignores other names (e.g. *.disabled)
        text = path.read_text(errors="replace")
        found += _deb822(text) if path.suffix == ".sources" else _one_line(text)
    return found


def _one_line(text: str) -> list[tuple[str, str]]:
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            found.append((words[0], words[1]))
    return found


def _deb822(text: str) -> list[tuple[str, str]]:
    found = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:  # a continuation line
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        found += [(uri, suite) for uri in fields.get("uris", "").split() for suite in fields.get("suites", "").split()]
    return found


def mirror_for(suite: str, sources: list[tuple[str, str]]) -> str | None:
    """The first mirror the machine's apt sources name for ``suite`` itself (not -updates, -security)."""
    return next((uri for uri, named in sources if named == suite), None)


def host_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    pytest.skip("/etc/os-release names no VERSION_CODENAME: not a Debian-like host")


def rootfs() -> Path:
    """A minimal root file system of the host's own release (so the container's python3 matches the
    host's ABI), debootstrapped once from the mirror the host's apt sources name and kept for later runs."""
    suite = host_codename()
    root = CACHE / f"{suite}-{hashlib.sha256(PACKAGES.encode()).hexdigest()[:8]}"
    if (root / "usr/lib/systemd/systemd").exists():
        return root
    mirror = mirror_for(suite, apt_sources())
    if mirror is None:
        pytest.skip(f"the apt sources in /etc/apt name no mirror for {suite}")
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", suite, str(tmp), mirror],
                          capture_output=True, text=True, timeout=1500)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"debootstrap of {suite} from {mirror} failed: {proc.stderr.strip()[-300:]}")
    tmp.rename(root)
    return root


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """svcdns and its dependencies as wheels, built from a copy of the checkout (setuptools' build/
    directory would otherwise carry deleted modules into the wheel)."""
    tmp = tmp_path_factory.mktemp("wheels")
    skip = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")
    shutil.copytree(REPO, tmp / "src", ignore=skip)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(tmp / "dist"), str(tmp / "src")],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"pip could not build the wheels (no package index?): {proc.stderr.strip()[-300:]}")
    return tmp / "dist"


@pytest.fixture
def container(tmp_path, wheels):
    root = rootfs()
    log = open(tmp_path / "nspawn.log", "w")
    boot = subprocess.Popen(
        ["systemd-nspawn", "-q", "--keep-unit", "--register=no", "-D", str(root), "--volatile=overlay",
         "--private-network", f"--bind-ro={wheels}:/mnt/wheels", "--boot"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip

    def leader() -> int | None:
        """The container's init: nspawn's child that runs systemd."""
        for kid in subprocess.run(["pgrep", "-P", str(boot.pid)], capture_output=True, text=True).stdout.split():
            try:
                if Path(f"/proc/{kid}/comm").read_text().strip() == "systemd":
                    return int(kid)
            except OSError:
                continue
        return None

    def run(*argv, check=True, timeout=60):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        return subprocess.run(["nsenter", "-t", str(pid), "-a", "--", *argv], capture_output=True, text=True,
                               env=env, check=check, timeout=timeout)  # fmt: skip

    try:
        pid = run.pid = wait_for(leader, 30, 0.2, "the container's init")
        wait_for(lambda: run("systemctl", "is-system-running", check=False).stdout.strip() in ("running", "degraded"),
                 120, 0.5, "the container to boot")  # fmt: skip
        yield run
    finally:
        if boot.poll() is None:
            os.killpg(boot.pid, signal.SIGTERM)  # nspawn powers the container off
            try:
                boot.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(boot.pid, signal.SIGKILL)
                boot.wait(10)
        log.close()


def test_apt_sources_in_both_formats(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# a comment\ndeb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main contrib\n"
    )
    (tmp_path / "sources.list.d/a.sources").write_text(
        "Types: deb deb-src\nURIs: http://two.example/debian\nSuites: trixie trixie-updates\nComponents: main\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: sid\nComponents: main\n"
    )
    (tmp_path / "sources.list.d/b.list.disabled").write_text("deb http://ignored.example/debian forky main\n")
    sources = apt_sources(tmp_path)
    assert sources == [("http://one.example/debian", "bookworm"), ("http://two.example/debian", "trixie"),
                       ("http://two.example/debian", "trixie-updates")]  # fmt: skip
    assert mirror_for("trixie", sources) == "http://two.example/debian"
    assert mirror_for("sid", sources) is None and mirror_for("forky", sources) is None


# Queries, one at a time, alternating UDP and TCP, each on a new socket waiting up to 10 s for its
# answer, until /run/stop-loop appears: how many were answered with the VIP, refused, SERVFAIL or
# lost, and the slowest answer.
QUERY_LOOP = """
import json, os, socket, struct, sys, time
from dnslib import DNSRecord
vip, counts, slowest, n = sys.argv[1], dict(answered=0, refused=0, servfail=0, lost=0, wrong=0, over3=0), 0.0, 0
print("started", flush=True)
while not os.path.exists("/run/stop-loop"):
    n += 1
    q = DNSRecord.question("web.default.svc.cluster.local").pack()
    tcp = n % 2 == 0
    start = time.monotonic()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            s.connect(("127.0.0.1", 53))
            if tcp:
                s.sendall(struct.pack("!H", len(q)) + q)
                size = struct.unpack("!H", s.recv(2))[0]
                data = b""
                while len(data) < size:
                    data += s.recv(size - len(data))
            else:
                s.send(q)
                data = s.recv(4096)
        a = DNSRecord.parse(data)
        kind = "answered" if [str(r.rdata) for r in a.rr] == [vip] else "servfail" if a.header.rcode == 2 else "wrong"
    except ConnectionRefusedError:
        kind = "refused"
    except (TimeoutError, OSError, struct.error):
        kind = "lost"
    counts[kind] += 1
    took = time.monotonic() - start
    counts["over3"] += took > 3
    slowest = max(slowest, took)
    time.sleep(0.02)
print(json.dumps(dict(counts, slowest=round(slowest, 3))), flush=True)
"""
REGISTRY = "/srv/svcdns-registry"  # outside /var/lib/svcdns: needs the ReadWritePaths= drop-in install writes
WEB = "name: web\nports: [{port: 80}]\nendpoints: [10.244.1.2]\n"  # no clusterIP: the agent allocates one


def test_wheel_install_under_opt_boots_hardened_notifies_answers_and_restarts(container):
    run = container
    run("python3", "-m", "venv", "/opt/svcdns")
    run("/opt/svcdns/bin/pip", "install", "-q", "--no-index", "--find-links", "/mnt/wheels", "svcdns", timeout=300)
    svcdns = "/opt/svcdns/bin/svcdns"
    out = run(svcdns, "install").stdout
    assert "installed /etc/systemd/system/svcdns.service" in out
    assert run("stat", "-c", "%a", "/etc/svcdns/svcdns.toml").stdout.strip() == "600"
    assert run("test", "-e", "/etc/systemd/resolved.conf.d/svcdns.conf", check=False).returncode != 0
    # the operator moves the registry and runs install again, which lets the service write there
    run("sed", "-i", f's|^registry = .*|registry = "{REGISTRY}"|', "/etc/svcdns/svcdns.toml")
    assert "registry.conf" in run(svcdns, "install").stdout
    assert run("ls", "/etc/systemd/system/svcdns.service.d").stdout.split() == ["registry.conf"]  # nothing relaxed
    run("mkdir", "-p", f"{REGISTRY}/default")
    run("sh", "-c", f"printf '{WEB}' > {REGISTRY}/default/web.yaml && printf 'name: Bad_Name\n' > {REGISTRY}/bad.yaml")

    started = run("systemctl", "start", "svcdns", check=False, timeout=120)  # Type=notify: waits for READY=1
    journal = run("journalctl", "-u", "svcdns", "--no-pager", "-n", "40", check=False).stdout
    assert started.returncode == 0, f"{started.stderr}\n{journal}"
    assert run("systemctl", "is-active", "svcdns").stdout.strip() == "active"
    assert "Services" in run("systemctl", "show", "-p", "StatusText", "svcdns").stdout
    vip = wait_for(lambda: run("dig", "+short", "@127.0.0.1", "web.default.svc.cluster.local", check=False).stdout.strip(),
                   30, 0.5, "dig to answer inside the container")  # fmt: skip
    assert ipaddress.ip_address(vip) in ipaddress.ip_network("10.96.0.0/12"), journal
    # written through ProtectSystem=strict: the store, or its log of changes since
    assert vip in run("sh", "-c", f"cat {REGISTRY}/.svcdns/allocations.*").stdout
    assert vip in run("nft", "list", "table", "ip", "svcdns").stdout

    # journald files each line at its own priority: the bad file is an error, "ready" is info
    def priorities() -> dict[str, set[str]]:
        lines = run("journalctl", "-u", "svcdns", "-o", "json", "--no-pager", check=False).stdout.splitlines()
        found: dict[str, set[str]] = {}
        for entry in map(json.loads, lines):
            if isinstance(entry.get("MESSAGE"), str):
                found.setdefault(entry["PRIORITY"], set()).add(entry["MESSAGE"])
        return found

    seen = wait_for(lambda: (p := priorities()) and any("bad.yaml" in m for m in p.get("3", ())) and p, 10, 0.5,
                    "the bad file's error in the journal")  # fmt: skip
    assert any("agent: ready" in m for m in seen.get("6", ())), seen
    assert not any(m.startswith("<") for ms in seen.values() for m in ms)  # journald took the prefix off
    warnings = run("journalctl", "-u", "svcdns", "-p", "warning", "--no-pager", "-o", "cat").stdout
    assert "bad.yaml" in warnings and "agent: ready" not in warnings
    # and nothing else went wrong: a system call the filter refused would show up here as a failure
    # (a kernel without the dummy driver, as CI's, puts the cluster DNS address on lo: said once; the
    # container's private network does not forward, which the node check rightly says once too)
    expected = ("bad.yaml", "has no dummy interfaces", "net.ipv4.ip_forward is 0")
    assert all(any(e in line for e in expected) for line in warnings.splitlines()), warnings
    security = run("systemd-analyze", "security", "svcdns", "--no-pager").stdout  # with install's drop-in
    assert float(re.search(r"Overall exposure level for svcdns.service: ([0-9.]+)", security)[1]) <= 2.5, security

    restarts_keep_dns_answering(run, vip)
    resolved_sends_only_the_zone_to_svcdns(run, svcdns, vip)

    first = run("systemctl", "show", "-p", "MainPID", "--value", "svcdns").stdout.strip()
    run("systemctl", "kill", "-s", "KILL", "svcdns")
    wait_for(lambda: run("systemctl", "show", "-p", "MainPID", "--value", "svcdns").stdout.strip() not in ("0", first)
             and run("systemctl", "is-active", "svcdns", check=False).stdout.strip() == "active",
             60, 0.5, "Restart=on-failure to bring it back")  # fmt: skip
    run("systemctl", "stop", "svcdns", timeout=60)
    assert run("systemctl", "is-active", "svcdns", check=False).stdout.strip() == "inactive"
    # systemd 252 closes the store at a stop (FileDescriptorStorePreserve= came in 254): refused, not a black hole
    assert run("systemctl", "show", "-p", "NFileDescriptorStore", "--value", "svcdns").stdout.strip() == "0"
    assert "refused" in run("dig", "+tries=1", "+time=1", "@127.0.0.1", "web.default.svc.cluster.local", check=False).stdout
    # SIGTERM left the rules in place; cleanup removes them
    assert "svcdns" in run("nft", "list", "tables").stdout
    run(svcdns, "cleanup")
    assert "svcdns" not in run("nft", "list", "tables").stdout


def restarts_keep_dns_answering(run, vip: str) -> None:
    """Before: each restart was a 1.0-2.2 s gap, refused then SERVFAIL. Now the sockets wait in
    systemd's store and the next process answers from the last known zone."""
    stored = run("systemctl", "show", "-p", "NFileDescriptorStore", "--value", "svcdns").stdout.strip()
    assert int(stored) >= 2, f"{stored} descriptors in systemd's store"
    loop = subprocess.Popen(["nsenter", "-t", str(run.pid), "-a", "--", "/opt/svcdns/bin/python", "-c", QUERY_LOOP, vip],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert loop.stdout is not None and loop.stdout.readline().strip() == "started", loop.stderr
        took = []
        for _ in range(5):
            before = run("systemctl", "show", "-p", "MainPID", "--value", "svcdns").stdout.strip()
            start = time.monotonic()
            run("systemctl", "restart", "svcdns", timeout=120)  # Type=notify: returns once the new one is ready
            took.append(time.monotonic() - start)
            assert run("systemctl", "show", "-p", "MainPID", "--value", "svcdns").stdout.strip() != before
        run("touch", "/run/stop-loop")
        out, err = loop.communicate(timeout=30)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    result = json.loads(out.strip().splitlines()[-1])
    summary = (f"across 5 restarts ({', '.join(f'{t:.1f}' for t in took)} s each): {result['answered']} answered, "
               f"{result['refused']} refused, {result['servfail']} SERVFAIL, {result['lost']} lost, {result['wrong']} "
               f"wrong; {result['over3']} waited over 3 s, the slowest {result['slowest']} s; {stored} sockets stored")  # fmt: skip
    print(summary)
    last = run("journalctl", "-u", "svcdns", "-o", "short-precise", "--no-pager", "-n", "30", check=False).stdout
    # every query answered, by the old process or the next; how long one waits is the next process's
    # start-up (the target is 3 s: met on a quiet host, not on a 2-core host shared with other test
    # runs), so the wait is reported, and bounded only by the loop's 10 s
    assert result["answered"] > 0, summary
    assert result["refused"] == result["servfail"] == result["lost"] == result["wrong"] == 0, \
        f"{summary}\nthe last restart:\n{last}"  # fmt: skip
    journal = run("journalctl", "-u", "svcdns", "--no-pager", "-o", "cat").stdout
    assert "answering from the last known zone" in journal, journal[-2000:]


def dns_queries(run) -> int:
    """How many queries svcdns has answered (its /metrics)."""
    text = run("/opt/svcdns/bin/python", "-c", "import urllib.request; "
               "print(urllib.request.urlopen('http://127.0.0.1:10256/metrics', timeout=5).read().decode())").stdout
    return int(sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("svcdns_dns_responses_total")))


def resolved_sends_only_the_zone_to_svcdns(run, svcdns: str, vip: str) -> None:
    """Before: the drop-in's global DNS=127.0.0.1 made svcdns resolve every host name, forwarding them
    to resolved's 127.0.0.53: a loop. Now the zone and its reverse zones are routing domains of the
    svcdns0 link alone (systemd-networkd), and every other name stays away from svcdns."""
    if run("systemctl", "cat", "systemd-resolved", check=False).returncode != 0:
        pytest.skip("no systemd-resolved in the container's image")
    if run("ip", "link", "show", "svcdns0", check=False).returncode != 0:
        # this kernel has no dummy driver (the agent put the address on lo, which resolved never
        # routes to): a veth pair stands in for the agent's svcdns0
        run("ip", "link", "add", "svcdns0", "type", "veth", "peer", "name", "svcdns0-peer")
        run("ip", "link", "set", "svcdns0-peer", "up")
    assert "50-svcdns.network" in run(svcdns, "install", "--with-resolved").stdout
    run("systemctl", "enable", "--now", "systemd-networkd")
    run("networkctl", "reload")
    run("systemctl", "restart", "svcdns", timeout=120)  # the cluster DNS address goes on svcdns0
    wait_for(lambda: "~cluster.local" in run("resolvectl", "domain", "svcdns0", check=False).stdout, 30, 0.5,
             "resolved to take svcdns0's routing domains")  # fmt: skip
    status = run("resolvectl", "status", "svcdns0", check=False).stdout
    before = dns_queries(run)
    hosts = wait_for(lambda: run("getent", "hosts", "web.default.svc.cluster.local", check=False).stdout.split(), 20,
                     0.5, "getent to resolve a Service name through resolved")  # fmt: skip
    assert hosts[0] == vip, f"{hosts}\n{status}"
    ptr = run("dig", "+short", "@127.0.0.53", "-x", vip, check=False).stdout.strip()
    assert ptr == "web.default.svc.cluster.local.", f"{ptr!r}\n{status}"
    inside = dns_queries(run)
    assert inside > before, "the zone's names went to svcdns"
    for name in ("example.org", "host.internal"):
        run("getent", "hosts", name, check=False)
        run("dig", "+tries=1", "+time=2", "@127.0.0.53", name, check=False)
    assert dns_queries(run) == inside, f"names outside the zone reached svcdns through resolved\n{status}"
