"""The file registry: reading a directory of service files into Services with stable VIPs."""

import ipaddress
import json

import pytest

from svcdns.errors import NotFound, UsageError
from svcdns.model import Endpoint, Service, ServicePort
from svcdns.registry import open_registry
from svcdns.registry.documents import MAX_DOCUMENT_BYTES
from svcdns.registry.files.store import AllocationStore


def write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


WEB = "name: web\nports:\n  - {name: http, port: 80, targetPort: 8080}\nendpoints:\n  - 10.0.1.5\n"


def test_snapshot_reads_yaml_and_json_anywhere_below_the_root(tmp_path):
    write(tmp_path, "default/web.yaml", WEB)
    write(
        tmp_path,
        "teams/a/db.json",
        json.dumps({"name": "db", "namespace": "data", "clusterIP": "None", "ports": [{"port": 5432}]}),
    )
    snap = open_registry(str(tmp_path)).snapshot()
    assert not snap.errors
    web = snap.table.get("default", "web")
    assert web.ports[0].target_port == 8080 and str(web.endpoints[0].address) == "10.0.1.5"
    assert web.cluster_ips and web.cluster_ips[0] in ipaddress.ip_network("10.96.0.0/12")
    assert snap.table.get("data", "db").type == "Headless"


def test_hidden_swap_and_temp_files_are_never_read(tmp_path):
    write(tmp_path, "web.yaml", WEB)
    for junk in (
        ".web.yaml.swp",
        "web.yaml~",
        "#web.yaml#",
        ".web.yaml.tmp",
        "web.yaml.bak",
        "notes.txt",
        ".hidden/x.yaml",
    ):
        write(tmp_path, junk, "name: [broken")
    snap = open_registry(str(tmp_path)).snapshot()
    assert list(snap.services) == [("default", "web")]
    assert not snap.errors


@pytest.mark.parametrize(
    "text, says",
    [
        ("name: [", "does not parse as YAML"),
        ("", "is empty"),
        ("- a\n- b\n", "must be a mapping"),
        ("name: Web\nports: [{port: 80}]\n", "field 'name': value 'Web'"),
        ("name: web\nports: [{port: 99999}]\n", "field 'ports[0].port': value 99999"),
        ("name: web\nports: [{port: 80, protocol: ICMP}]\n", "field 'ports[0].protocol': value 'ICMP'"),
        ("name: web\nports: [{port: 80}]\nendpoints: [300.1.1.1]\n", "field 'endpoints[0].address'"),
        ("name: web\nports: [{name: a, port: 80}, {name: a, port: 81}]\n", "duplicate port name"),
        ("name: web\nports: [{port: 80}]\nclusterIP: 10.200.0.1\n", "outside the service CIDR"),
        ("name: web\nports: [{port: 80}]\nendpoints: ['fd00::1']\n", "is IPv6 but the Service has only IPv4"),
    ],
)
def test_bad_files_are_reported_with_file_field_and_value_and_others_keep_working(tmp_path, text, says):
    write(tmp_path, "good.yaml", "name: good\nports: [{port: 80}]\n")
    write(tmp_path, "bad.yaml", text)
    snap = open_registry(str(tmp_path)).snapshot()
    assert ("default", "good") in snap.services
    assert ("default", "web") not in snap.services
    assert "bad.yaml" in snap.errors
    assert says in snap.errors["bad.yaml"] and snap.errors["bad.yaml"].startswith("bad.yaml")


def test_oversized_file_is_rejected(tmp_path):
    write(tmp_path, "big.yaml", "name: big\n#" + "x" * MAX_DOCUMENT_BYTES + "\n")
    snap = open_registry(str(tmp_path)).snapshot()
    assert "over the" in snap.errors["big.yaml"] and not snap.services


def test_a_file_that_goes_bad_keeps_its_last_good_version_and_vip(tmp_path):
    reg = open_registry(str(tmp_path))
    path = write(tmp_path, "default/web.yaml", WEB)
    good = reg.snapshot().table.get("default", "web")
    path.write_text("name: web\nports: [{port: 0}]\n")
    snap = reg.snapshot()
    assert snap.table.get("default", "web") == good
    assert "value 0" in snap.errors["default/web.yaml"]
    # a fresh reader (another process) has no last good version, but the VIP stays reserved
    fresh = open_registry(str(tmp_path)).snapshot()
    assert ("default", "web") not in fresh.services
    path.write_text(WEB)
    assert open_registry(str(tmp_path)).snapshot().table.get("default", "web").cluster_ips == good.cluster_ips


def test_vips_are_stable_across_readers_and_released_on_delete(tmp_path):
    write(tmp_path, "a.yaml", "name: a\nports: [{port: 80}]\n")
    write(tmp_path, "b.yaml", "name: b\nports: [{port: 80}]\n")
    first = open_registry(str(tmp_path)).snapshot().table
    second = open_registry(str(tmp_path)).snapshot().table
    assert first.get("default", "a").cluster_ips == second.get("default", "a").cluster_ips
    assert first.get("default", "a").cluster_ips != first.get("default", "b").cluster_ips
    assert set(AllocationStore.load(tmp_path).services) == {"default/a", "default/b"}
    (tmp_path / "a.yaml").unlink()
    open_registry(str(tmp_path)).snapshot()
    assert set(AllocationStore.load(tmp_path).services) == {"default/b"}


def test_a_renamed_file_keeps_its_vip(tmp_path):
    reg = open_registry(str(tmp_path))
    write(tmp_path, "a.yaml", "name: a\nports: [{port: 80}]\n")
    vip = reg.snapshot().table.get("default", "a").cluster_ips
    (tmp_path / "a.yaml").rename(tmp_path / "renamed.yaml")
    assert open_registry(str(tmp_path)).snapshot().table.get("default", "a").cluster_ips == vip


def test_two_files_requesting_one_vip(tmp_path):
    write(tmp_path, "a.yaml", "name: a\nclusterIP: 10.96.0.50\nports: [{port: 80}]\n")
    write(tmp_path, "b.yaml", "name: b\nclusterIP: 10.96.0.50\nports: [{port: 80}]\n")
    snap = open_registry(str(tmp_path)).snapshot()
    assert str(snap.table.get("default", "a").cluster_ips[0]) == "10.96.0.50"
    assert ("default", "b") not in snap.services
    assert "already held by Service default/a" in snap.errors["b.yaml"]


def test_duplicate_definitions_prefer_the_canonical_path(tmp_path):
    write(tmp_path, "aaa.yaml", "name: web\nports: [{port: 81}]\n")
    write(tmp_path, "default/web.yaml", "name: web\nports: [{port: 80}]\n")
    snap = open_registry(str(tmp_path)).snapshot()
    assert snap.table.get("default", "web").ports[0].port == 80
    assert "already defined by default/web.yaml" in snap.errors["aaa.yaml"]


def test_cli_side_writes(tmp_path):
    reg = open_registry(str(tmp_path))
    svc = reg.create(Service("web", ports=(ServicePort(80),)))
    assert svc.cluster_ips
    with pytest.raises(UsageError, match="already exists"):
        reg.create(Service("web", ports=(ServicePort(80),)))
    # the operator's file records no allocated VIP: it lives in the store
    assert "clusterIP" not in (tmp_path / "default" / "web.yaml").read_text()
    out = reg.update("default", "web", lambda s: s.with_endpoints((Endpoint("10.0.0.7"),)))
    assert out.cluster_ips == svc.cluster_ips and out.endpoints[0].address == ipaddress.ip_address("10.0.0.7")
    assert open_registry(str(tmp_path)).get("default", "web") == out
    reg.delete("default", "web")
    with pytest.raises(NotFound):
        open_registry(str(tmp_path)).get("default", "web")


def test_missing_registry_directory_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="does not exist; create it"):
        open_registry(str(tmp_path / "nope")).snapshot()


def test_create_after_a_file_was_deleted_behind_the_registrys_back(tmp_path):
    reg = open_registry(str(tmp_path))
    first = reg.create(Service("web", ports=(ServicePort(80),), cluster_ips=("10.96.0.60",)))
    (tmp_path / "default" / "web.yaml").unlink()  # no agent watching: the store still holds the VIP
    again = open_registry(str(tmp_path)).create(Service("web", ports=(ServicePort(80),), cluster_ips=("10.96.0.60",)))
    assert again.cluster_ips == first.cluster_ips
    (tmp_path / "default" / "web.yaml").unlink()
    other = open_registry(str(tmp_path)).create(Service("other", ports=(ServicePort(80),), cluster_ips=("10.96.0.60",)))
    assert str(other.cluster_ips[0]) == "10.96.0.60"  # the stale holder is gone, its VIP is free


def test_create_refuses_a_service_defined_by_a_hand_written_file(tmp_path):
    write(tmp_path, "teams/web.yaml", "name: web\nports: [{port: 80}]\n")
    open_registry(str(tmp_path)).snapshot()  # the agent saw it: its VIP is recorded
    with pytest.raises(UsageError, match="already exists \\(defined by teams/web.yaml\\)"):
        open_registry(str(tmp_path)).create(Service("web", ports=(ServicePort(80),)))
    got = open_registry(str(tmp_path)).get("default", "web")  # found by a scan, not at the canonical path
    assert got.cluster_ips


@pytest.mark.parametrize("first", [".yaml", ".json"])
def test_yaml_wins_over_json_at_the_canonical_path_while_running_and_after_a_restart(tmp_path, first):
    texts = {".yaml": "name: web\nports: [{port: 80}]\n", ".json": '{"name": "web", "ports": [{"port": 81}]}'}
    second = ".json" if first == ".yaml" else ".yaml"
    running = open_registry(str(tmp_path))
    write(tmp_path, f"default/web{first}", texts[first])
    running.snapshot()
    write(tmp_path, f"default/web{second}", texts[second])
    running.refresh([f"default/web{second}"])  # what the watch does on the new file
    for snap in (running.current(), open_registry(str(tmp_path)).snapshot()):
        assert snap.table.get("default", "web").ports[0].port == 80
        assert "already defined by default/web.yaml" in snap.errors["default/web.json"]


def test_a_fifo_or_a_symlink_to_one_is_reported_not_opened(tmp_path):
    """A reader that opened a FIFO would wait for a writer forever (and SIGTERM would not end it)."""
    import os
    import threading

    write(tmp_path, "good.yaml", "name: good\nports: [{port: 80}]\n")
    os.mkfifo(tmp_path / "x.yaml")
    os.symlink(tmp_path / "x.yaml", tmp_path / "y.yaml")
    result = []
    reader = threading.Thread(target=lambda: result.append(open_registry(str(tmp_path)).snapshot()), daemon=True)
    reader.start()
    reader.join(10)
    assert result, "reading the registry hung on a FIFO"
    snap = result[0]
    assert ("default", "good") in snap.services
    for name in ("x.yaml", "y.yaml"):
        assert "is not a regular file" in snap.errors[name]


def test_a_file_with_an_endpoint_inside_the_service_cidrs_is_reported_and_the_last_good_version_stays(tmp_path):
    path = write(tmp_path, "default/web.yaml", WEB)
    reg = open_registry(str(tmp_path))
    good = reg.snapshot().table.get("default", "web")
    path.write_text(WEB + "  - 10.96.1.1\n")
    reg.refresh(["default/web.yaml"])
    snap = reg.current()
    assert snap.errors["default/web.yaml"] == (
        "default/web.yaml: field 'endpoints[1].address': value '10.96.1.1': is inside the service CIDR "
        "10.96.0.0/12, where only VIPs live; an endpoint must lie outside it"
    )
    assert snap.table.get("default", "web") == good


def test_changes_applied_one_file_at_a_time_give_what_a_full_read_gives(tmp_path):
    """The watch's path (one file re-read, only its Service rebuilt) against a fresh reader of the
    same directory, after each of a random run of writes, duplicates, renames and deletes."""
    import random

    rng = random.Random(3)
    reg = open_registry(str(tmp_path))
    reg.snapshot()
    for step in range(60):
        name, port = f"s{rng.randrange(6)}", 80 + rng.randrange(3)
        rel = rng.choice([f"default/{name}.yaml", f"default/{name}.json", f"other/{name}-{rng.randrange(2)}.yaml"])
        path = tmp_path / rel
        op = rng.random()
        if op < 0.3 and path.exists():
            path.unlink()
        elif op < 0.4 and path.exists():
            rel2 = f"moved/{step}.yaml"
            write(tmp_path, rel2, "")
            path.rename(tmp_path / rel2)
            reg.refresh([rel2])
        else:
            text = json.dumps({"name": name, "ports": [{"port": port}]}) if rel.endswith(".json") else \
                f"name: {name}\nports: [{{port: {port}}}]\n"  # fmt: skip
            write(tmp_path, rel, text)
        reg.refresh([rel])
        fresh = open_registry(str(tmp_path)).snapshot()
        got = reg.current()
        assert dict(got.table.services) == dict(fresh.table.services), step
        assert got.errors == fresh.errors, step
        assert set(AllocationStore.load(tmp_path).services) == {f"{ns}/{n}" for ns, n in fresh.table.services}, step
