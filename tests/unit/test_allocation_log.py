"""The VIP allocation store's log: a change appends, the store is rewritten only now and then, and
a crash at any point leaves what was acknowledged."""

import ipaddress
import json
import logging

import pytest

from svcdns.registry.files import store as store_mod
from svcdns.registry.files.store import Allocation, AllocationStore


def vip(i):
    return (ipaddress.ip_address(f"10.96.1.{i}"),)


def seeded(tmp_path, n=3):
    store = AllocationStore.load(tmp_path)
    for i in range(n):
        store.services[f"default/s{i}"] = Allocation(vip(i), f"s{i}.yaml")
    store.save()  # the first save writes the store whole
    return store


def test_a_change_appends_to_the_log_and_leaves_the_store_file_alone(tmp_path):
    store = seeded(tmp_path)
    before = store.path.read_bytes()
    store.services["default/new"] = Allocation(vip(9), "new.yaml")
    del store.services["default/s0"]
    store.save()
    assert store.path.read_bytes() == before
    lines = store.log_path.read_text().splitlines()
    assert json.loads(lines[0]) == {"generation": store.generation}
    assert [json.loads(line) for line in lines[1:]] == [
        {"service": "default/new", "clusterIPs": ["10.96.1.9"], "file": "new.yaml"},
        {"service": "default/s0", "released": True},
    ]
    again = AllocationStore.load(tmp_path)
    assert dict(again.services) == dict(store.services) and "default/s0" not in again.services


def test_a_reader_that_holds_the_store_sees_another_writers_append(tmp_path):
    agent = seeded(tmp_path)
    cli = AllocationStore.load(tmp_path)
    cli.services["default/cli"] = Allocation(vip(20), "cli.yaml")
    cli.save()
    assert agent.changed_on_disk()
    assert AllocationStore.load(tmp_path).services["default/cli"].ips == vip(20)


def test_a_long_log_is_folded_into_the_store_with_the_next_generation(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "COMPACT_AT", 4)
    store = seeded(tmp_path, 2)
    generation = store.generation
    for i in range(10, 16):
        store.services[f"default/s{i}"] = Allocation(vip(i), f"s{i}.yaml")
        store.save()
    assert store.generation == generation + 1
    assert json.loads(store.path.read_text())["generation"] == store.generation
    assert len(store.log_path.read_text().splitlines()) - 1 < 4
    assert dict(AllocationStore.load(tmp_path).services) == dict(store.services)


def test_a_log_left_by_a_crash_during_a_rewrite_is_ignored(tmp_path):
    store = seeded(tmp_path)
    stale = {"service": "default/s1", "released": True}  # already in the rewritten store, or undone since
    store.log_path.write_text(json.dumps({"generation": store.generation - 1}) + "\n" + json.dumps(stale) + "\n")
    again = AllocationStore.load(tmp_path)
    assert "default/s1" in again.services
    again.services["default/x"] = Allocation(vip(30), "x.yaml")
    again.save()  # rewritten whole: the stale log goes
    assert not again.log_path.exists() and "default/x" in AllocationStore.load(tmp_path).services


def test_a_last_line_cut_short_is_ignored_with_a_warning_and_the_next_save_rewrites(tmp_path, caplog):
    store = seeded(tmp_path)
    store.services["default/kept"] = Allocation(vip(40), "kept.yaml")
    store.save()
    with open(store.log_path, "a") as f:
        f.write('{"service": "default/torn", "clusterIPs": ["10.9')
    with caplog.at_level(logging.WARNING):
        again = AllocationStore.load(tmp_path)
    assert "cut short" in caplog.text and "allocations.log" in caplog.text
    assert "default/kept" in again.services and "default/torn" not in again.services
    again.services["default/next"] = Allocation(vip(41), "next.yaml")
    again.save()
    assert not again.log_path.exists()
    assert {"default/kept", "default/next"} <= set(AllocationStore.load(tmp_path).services)


def test_a_garbled_line_inside_the_log_is_a_clear_error(tmp_path):
    store = seeded(tmp_path)
    store.log_path.write_text(json.dumps({"generation": store.generation}) + "\n{nope\n" + "{}\n")
    with pytest.raises(Exception, match=r"allocations.log: line 2"):
        AllocationStore.load(tmp_path)


def test_bulk_changes_to_the_allocations_are_refused_so_none_escapes_the_log(tmp_path):
    store = seeded(tmp_path)
    with pytest.raises(TypeError, match="one holder at a time"):
        store.services.update({"default/z": Allocation(vip(50), "z.yaml")})
