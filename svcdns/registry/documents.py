"""Service documents: the YAML / JSON text of a registry entry, to and from :class:`Service`.

The same document form serves the service files, ``svcdns service get -o json|yaml`` and (later) the
etcd values. Every failure is a :class:`DocumentError` naming the source, the field and the value.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from ..errors import UsageError
from ..model import Service, ValidationError

MAX_DOCUMENT_BYTES = 1 << 20  # 1 MiB: a Service with thousands of endpoints fits; a runaway file does not
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class DocumentError(UsageError):
    """A registry document is not a valid Service."""

    def __init__(self, source: str, field: str, value: Any, reason: str) -> None:
        self.source = source
        self.field = field
        self.value = value
        self.reason = reason
        where = f"{source}: " if source else ""
        what = f"field {field!r}: value {value!r}: " if field else (f"{value!r}: " if value is not None else "")
        super().__init__(f"{where}{what}{reason}")


def decode(data: bytes, source: str = "", fmt: str | None = None) -> Service:
    """Parse ``data`` as ``fmt`` ("json" or "yaml"; None: JSON for a ``.json`` source, else YAML)
    and validate it into a Service."""
    fmt = fmt or ("json" if source.endswith(".json") else "yaml")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentError(source, "", None, f"is {len(data)} bytes, over the {MAX_DOCUMENT_BYTES}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DocumentError(source, "", None, f"is not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        if fmt == "json":
            doc = json.loads(text)
        else:
            doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        kind = fmt.upper()
        raise DocumentError(source, "", None, f"does not parse as {kind}: {_one_line(err)}") from None
    if doc is None:
        raise DocumentError(source, "", None, "is empty; a Service needs at least a name")
    return from_document(doc, source)


def from_document(doc: Any, source: str = "") -> Service:
    try:
        return Service.from_dict(doc)
    except ValidationError as err:
        raise DocumentError(source, err.field, err.value, err.reason) from None
    except (TypeError, AttributeError) as err:  # a field of the wrong shape deep inside
        raise DocumentError(source, "", None, f"has a field of the wrong type: {err}") from None


def encode(svc: Service, fmt: str = "yaml", *, with_vips: bool = True) -> str:
    doc = svc.to_dict()
    if not with_vips:
        doc.pop("clusterIP", None)
        doc.pop("clusterIPs", None)
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "json-compact":
        return json.dumps(doc, separators=(",", ":"))
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
