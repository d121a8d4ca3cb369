"""Watching the registry directory: each change gives a new snapshot; nothing half-written is applied."""

import os
import shutil
from types import SimpleNamespace

import pytest
from inotify_simple import flags as F

from svcdns.registry import open_registry

A = "name: a\nports: [{port: 80}]\n"


@pytest.fixture
def watch(tmp_path):
    root = tmp_path / "registry"
    root.mkdir()
    w = open_registry(str(root)).watch(retry_interval=0.05)
    w.root = root
    yield w
    w.close()


def next_snapshot(w, timeout=5.0):
    snap = w.poll(timeout)
    assert snap is not None, "no snapshot came within the timeout"
    return snap


def test_create_modify_delete(watch):
    assert len(watch.start()) == 0
    (watch.root / "a.yaml").write_text(A)
    snap = next_snapshot(watch)
    assert ("default", "a") in snap.services
    (watch.root / "a.yaml").write_text("name: a\nports: [{port: 81}]\n")
    assert next_snapshot(watch).table.get("default", "a").ports[0].port == 81
    (watch.root / "a.yaml").unlink()
    assert ("default", "a") not in next_snapshot(watch).services


def test_revisions_increase(watch):
    first = watch.start().revision
    (watch.root / "a.yaml").write_text(A)
    assert next_snapshot(watch).revision > first


def test_rename_in_is_applied_and_temp_files_are_not(watch):
    watch.start()
    tmp = watch.root / ".a.yaml.tmp123"
    tmp.write_text(A)
    assert watch.poll(0.3) is None  # the temp file is invisible
    os.rename(tmp, watch.root / "a.yaml")
    assert ("default", "a") in next_snapshot(watch).services


def test_half_written_file_is_not_applied_until_closed(watch):
    watch.start()
    f = open(watch.root / "a.yaml", "w")
    f.write("name: a\nports: [{port")
    f.flush()
    assert watch.poll(0.3) is None  # written but not closed: not read
    f.write(": 80}]\n")
    f.close()
    snap = next_snapshot(watch)
    assert snap.table.get("default", "a").ports[0].port == 80 and not snap.errors


def test_new_subdirectories_are_watched(watch):
    watch.start()
    sub = watch.root / "team" / "deep"
    sub.mkdir(parents=True)
    (sub / "b.yaml").write_text("name: b\nnamespace: team\nports: [{port: 80}]\n")
    snap = watch.poll(2.0) or next_snapshot(watch)
    assert ("team", "b") in snap.services
    (sub / "c.yaml").write_text("name: c\nports: [{port: 80}]\n")
    assert ("default", "c") in next_snapshot(watch).services
    shutil.rmtree(watch.root / "team")
    snap = next_snapshot(watch)
    assert ("team", "b") not in snap.services and ("default", "c") not in snap.services


def test_a_file_renamed_into_a_new_directory_as_the_watch_is_added_is_not_missed(watch):
    """A writer makes ``default/`` and renames ``db.yaml`` into it at once: the rename may land after
    the directory's listing and before its watch. Each directory is watched before it is listed."""
    watch.start()
    real = watch._inotify.add_watch

    def add_watch(path, mask):  # the writer's rename lands just as the new directory gets its watch
        if str(path).endswith("default") and (watch.root / "default" / ".db.tmp").exists():
            os.rename(watch.root / "default" / ".db.tmp", watch.root / "default" / "db.yaml")
        return real(path, mask)

    watch._inotify.add_watch = add_watch
    (watch.root / "default").mkdir()
    (watch.root / "default" / ".db.tmp").write_text("name: db\nports: [{port: 80}]\n")
    snap = next_snapshot(watch)
    while ("default", "db") not in snap.services:
        snap = next_snapshot(watch, timeout=2)


def test_a_bad_edit_is_reported_and_the_last_good_version_stays(watch):
    watch.start()
    (watch.root / "a.yaml").write_text(A)
    good = next_snapshot(watch).table.get("default", "a")
    (watch.root / "a.yaml").write_text("name: a\nports: [{port: 0}]\n")
    snap = next_snapshot(watch)  # a new snapshot: the error is news
    assert snap.table.get("default", "a") == good
    assert "value 0" in snap.errors["a.yaml"]
    (watch.root / "a.yaml").write_text(A)
    assert not next_snapshot(watch).errors


def test_overflow_rescans_to_the_same_state(watch):
    watch.start()
    (watch.root / "a.yaml").write_text(A)
    next_snapshot(watch)
    # changes whose events were lost (the queue overflowed): written behind the watch's back
    watch.close()
    (watch.root / "a.yaml").unlink()
    (watch.root / "b.yaml").write_text("name: b\nports: [{port: 80}]\n")
    watch._setup()
    snap = watch._handle([SimpleNamespace(wd=-1, mask=F.Q_OVERFLOW, cookie=0, name="")])
    assert snap is not None and list(snap.services) == [("default", "b")]
    assert dict(snap.services) == dict(open_registry(str(watch.root)).snapshot().services)


def test_registry_directory_removed_keeps_everything_until_it_returns(watch):
    watch.start()
    (watch.root / "a.yaml").write_text(A)
    next_snapshot(watch)
    shutil.rmtree(watch.root)
    assert watch.poll(0.5) is None
    assert not watch.healthy and "keeping the last known Services" in watch.problem
    assert ("default", "a") in watch.registry.table.services
    watch.root.mkdir()
    (watch.root / "b.yaml").write_text("name: b\nports: [{port: 80}]\n")
    snap = next_snapshot(watch)
    assert watch.healthy and list(snap.services) == [("default", "b")]


def test_a_registry_directory_missing_at_start_is_not_an_empty_registry(tmp_path):
    root = tmp_path / "not-yet"
    w = open_registry(str(root)).watch(retry_interval=0.05)
    try:
        first = w.start()
        assert not first.synced and not w.healthy and "does not exist" in w.problem
        root.mkdir()
        (root / "a.yaml").write_text(A)
        snap = next_snapshot(w)
        assert snap.synced and list(snap.services) == [("default", "a")]
    finally:
        w.close()


def test_many_files_at_once(watch):
    watch.start()
    for i in range(300):
        (watch.root / f"s{i}.yaml").write_text(f"name: s{i}\nports: [{{port: 80}}]\n")
    seen = 0
    while seen < 300:
        seen = len(next_snapshot(watch))
    vips = {s.cluster_ips for s in watch.registry.table}
    assert len(vips) == 300
