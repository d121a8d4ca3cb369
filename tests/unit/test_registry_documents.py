"""The document codec against hostile input: any bytes give a Service or one validation error, quickly,
with a bounded message; the cases that once took the agent down are regression tests here."""

import json
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svcdns.errors import MAX_VALUE, UsageError
from svcdns.model import Service
from svcdns.registry import open_registry
from svcdns.registry.documents import SERVICE_FIELDS, DocumentError, decode, encode, from_document

BOUND = 3 * MAX_VALUE  # a message names the source, the field, the value (cut) and what is valid

BILLION_LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(7)]
    + ["name: *h", "ports: [{port: 80}]"]
)
HOSTILE = {
    "superscript port (YAML)": ("x.yaml", 'name: x\nports: [{port: "²"}]\n', "must be a port number"),
    "superscript targetPort (JSON)": ("x.json", '{"name": "x", "ports": [{"port": 80, "targetPort": "²"}]}', "port number"),
    "arabic-indic endpoint port": (
        "x.yaml", 'name: x\nports: [{name: h, port: 80}]\nendpoints: [{address: 10.0.0.1, ports: {h: "٨٠"}}]\n', "port number"
    ),
    "5000-digit integer (YAML)": ("x.yaml", "name: x\nports: [{port: " + "9" * 5000 + "}]\n", "does not parse as YAML"),
    "5000-digit integer (JSON)": ("x.json", '{"name": "x", "ports": [{"port": ' + "9" * 5000 + "}]}", "does not parse as JSON"),
    "4000-digit integer": ("x.yaml", "name: x\nports: [{port: " + "9" * 4000 + "}]\n", "must be a port number"),
    "JSON nested 100,000 deep": ("x.json", "[" * 100_000 + "]" * 100_000, "does not parse as JSON"),
    "YAML nested 100,000 deep": ("x.yaml", "[" * 100_000 + "]" * 100_000, "does not parse as YAML"),
    "YAML billion laughs": ("x.yaml", BILLION_LAUGHS, "aliases (*"),
    "not UTF-8": ("x.yaml", b"name: \xff\xfe", "is not UTF-8"),
    "a huge value": ("x.yaml", "name: " + "x" * 500_000 + "\nports: [{port: 80}]\n", "field 'name'"),
    "a huge unknown field": ("x.json", json.dumps({"name": "x", "y" * 500_000: 1}), "unknown field"),
    "a huge endpoint port name": ("x.json", json.dumps({
        "name": "x", "ports": [{"port": 80}], "endpoints": [{"address": "10.0.0.1", "ports": {"p" * 500_000: 80}}]
    }), "names no port"),  # fmt: skip
    "a python tag": ("x.yaml", "name: !!python/object:os.system x\n", "does not parse as YAML"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_document_is_one_bounded_validation_error(case):
    source, text, says = HOSTILE[case]
    data = text if isinstance(text, bytes) else text.encode()
    start = time.perf_counter()
    with pytest.raises(DocumentError) as err:
        decode(data, source)
    assert time.perf_counter() - start < 2, "parsing took too long"
    message = str(err.value)
    assert says in message and message.startswith(source) and len(message) < BOUND, message[:1000]
    assert isinstance(err.value, UsageError) and isinstance(err.value, ValueError)


def test_a_yaml_error_names_the_file_not_an_anonymous_string():
    with pytest.raises(DocumentError) as err:
        decode(b"name: [\n", "default/web.yaml")
    assert "<unicode string>" not in str(err.value) and "'default/web.yaml', line" in str(err.value)


def test_an_alias_free_document_with_stars_still_parses():
    assert decode(b"# a *comment*\nname: web\nports: [{port: 80}]\n", "web.yaml").name == "web"


def test_a_registry_with_every_hostile_file_keeps_its_good_service(tmp_path):
    (tmp_path / "good.yaml").write_text("name: good\nports: [{port: 80}]\n")
    for i, case in enumerate(sorted(HOSTILE)):
        source, text, _ = HOSTILE[case]
        (tmp_path / f"bad{i}{source[1:]}").write_bytes(text if isinstance(text, bytes) else text.encode())
    start = time.perf_counter()
    snap = open_registry(str(tmp_path)).snapshot()
    assert time.perf_counter() - start < 10
    assert list(snap.services) == [("default", "good")]
    assert len(snap.errors) == len(HOSTILE) and all(len(m) < BOUND for m in snap.errors.values())


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from(["80", "²", "TCP", "web", "10.0.0.1", "fd00::1", "None", "ClientIP", "Headless", "ExternalName"]),
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from([*SERVICE_FIELDS, "port", "address", "ports", "x"]), inner, max_size=5),
    max_leaves=20,
)
_documents = st.dictionaries(st.sampled_from(SERVICE_FIELDS), _values, max_size=8)


def _decodes_or_refuses(data: bytes, source: str) -> None:
    start = time.perf_counter()
    try:
        svc = decode(data, source)
    except DocumentError as err:
        assert len(str(err)) < BOUND
    else:
        assert isinstance(svc, Service)
        assert from_document(yaml.safe_load(encode(svc))) == svc
    assert time.perf_counter() - start < 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), source=st.sampled_from(["f.yaml", "f.json"]))
def test_any_bytes_give_a_service_or_a_validation_error(data, source):
    _decodes_or_refuses(data, source)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_documents, fmt=st.sampled_from(["yaml", "json"]))
def test_any_document_shape_gives_a_service_or_a_validation_error(doc, fmt):
    text = json.dumps(doc) if fmt == "json" else yaml.safe_dump(doc)
    _decodes_or_refuses(text.encode(), f"f.{fmt}")
