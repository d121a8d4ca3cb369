"""The file registry parses a pod file again only when it changed: the prober lists every pod every
few seconds. A file changed within the last second is always read again (two writes within the
clock's granularity look alike)."""

import json
import os

from svcdns.registry import open_registry
from svcdns.registry.files import pods
from svcdns.registry.files.pods import PodFiles


def write(path, ip):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"name": path.stem, "podIPs": [ip]}))
    os.rename(tmp, path)


def test_unchanged_pod_files_are_not_parsed_again_and_changed_ones_are(tmp_path, monkeypatch):
    folder = tmp_path / "pods" / "default"
    folder.mkdir(parents=True)
    write(folder / "web-0.json", "10.0.0.1")
    monkeypatch.setattr(pods, "SETTLED_NS", 0)  # as if written long ago (utime cannot age its ctime)
    registry = open_registry(str(tmp_path), [])
    decoded = []
    real = PodFiles.decode
    monkeypatch.setattr(PodFiles, "decode", staticmethod(lambda rel, data: decoded.append(rel) or real(rel, data)))
    assert [str(p.ips[0]) for p in registry.list_pods()] == ["10.0.0.1"] and len(decoded) == 1
    registry.list_pods()
    assert len(decoded) == 1, "an unchanged file was parsed again"
    write(folder / "web-0.json", "10.0.0.2")  # renamed into place
    assert [str(p.ips[0]) for p in registry.list_pods()] == ["10.0.0.2"] and len(decoded) == 2
    monkeypatch.setattr(pods, "SETTLED_NS", 1_000_000_000)
    # rewritten in place, same size, just now: read again every time until it settles
    (folder / "web-0.json").write_text(json.dumps({"name": "web-0", "podIPs": ["10.0.0.3"]}))
    assert [str(p.ips[0]) for p in registry.list_pods()] == ["10.0.0.3"]
    (folder / "web-0.json").write_text(json.dumps({"name": "web-0", "podIPs": ["10.0.0.4"]}))
    assert [str(p.ips[0]) for p in registry.list_pods()] == ["10.0.0.4"]
