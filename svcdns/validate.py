"""The field grammars Services, pods and probes share: names (RFC 1123 labels, port names, DNS names),
port numbers and addresses, each checked by one function that returns the normalised value or raises
:class:`ValidationError`, which names the field, the value, and what would be valid.

Apart from :mod:`svcdns.model` because pods (:mod:`svcdns.pod`), probes (:mod:`svcdns.probe.spec`) and
labels (:mod:`svcdns.labels`) check the same fields without being Services. Port names once found valid
are remembered (a bounded set), as label keys and values are: a full read checks 100k pods' ports.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

from .errors import MAX_VALUE, UsageError, shorten

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# a port name (IANA_SVC_NAME): 1-15 chars, lower-case alphanumerics and '-', at least one letter, no '--'
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
_DNS_NAME_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


class ValidationError(UsageError, ValueError):
    """A Service, port or endpoint is not valid: ``field`` is where, ``value`` is what was found
    (shown cut to a sane length), ``reason`` what would be valid. A usage error (exit 2), and a
    ValueError for callers that treat it as one."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.reason = reason
        field = field[:MAX_VALUE]  # a field name can come from the document too (an endpoint's port name)
        super().__init__(f"{field}: {shorten(value)}: {reason}", field=field, value=value, expected=reason)

    def within(self, prefix: str) -> ValidationError:
        """The same error, located inside ``prefix`` (e.g. ``ports[1]``)."""
        return ValidationError(f"{prefix}.{self.field}" if self.field else prefix, self.value, self.reason)


def check_label(field_name: str, value: Any) -> str:
    """An RFC 1123 DNS label: what Service names and namespaces must be."""
    if not isinstance(value, str):
        raise ValidationError(field_name, value, "must be a string")
    if not _LABEL.fullmatch(value):
        raise ValidationError(
            field_name,
            value,
            "must be an RFC 1123 DNS label: 1-63 lower-case letters, digits or '-', "
            "starting and ending with a letter or digit",
        )
    return value


def check_port_number(field_name: str, value: Any) -> int:
    """A port number, 1-65535; a string of ASCII digits is taken too (``port: "80"``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
            value = int(value)
        else:
            raise ValidationError(field_name, value, "must be a port number from 1 to 65535")
    if not 1 <= value <= 65535:
        raise ValidationError(field_name, value, "must be a port number from 1 to 65535")
    return value


def parse_ip(field_name: str, value: Any) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    if not isinstance(value, str):
        raise ValidationError(field_name, value, "must be an IPv4 or IPv6 address")
    try:
        # a dotted quad takes the C parser, which accepts what ipaddress does (four decimal octets,
        # no leading zeros) at a tenth of its cost: every pod and endpoint address comes through here
        packed = socket.inet_pton(socket.AF_INET, value)
    except (OSError, ValueError):
        pass
    else:
        first = packed[0]
        if first == 127 or 224 <= first <= 239 or packed == b"\0\0\0\0":
            raise ValidationError(field_name, value, "must be a unicast address (not unspecified, multicast or loopback)")
        return ipaddress.IPv4Address(packed)
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValidationError(field_name, value, "must be an IPv4 or IPv6 address") from None
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise ValidationError(field_name, value, "must be a unicast address (not unspecified, multicast or loopback)")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        raise ValidationError(field_name, value, "IPv4-mapped IPv6 addresses are not allowed; write the IPv4 address")
    return ip


def check_bool(field_name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(field_name, value, "must be true or false")
    return value


def check_dns_name(field_name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError(field_name, value, "must be a DNS name such as example.org")
    name = value.rstrip(".").lower()
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_DNS_NAME_LABEL.fullmatch(label) for label in labels):
        raise ValidationError(field_name, value, "must be a DNS name such as example.org (labels of 1-63 characters)")
    return name


# The cluster DNS address as a Service, as Kubernetes names it: the zone answers its names and


# values found valid, so that the same ones (read again at every change) are not matched again;
# cleared when full
MEMO_MAX = 1 << 16
_VALID_PORT_NAMES: set[str] = set()


def remember(known: set[str], text: str) -> None:
    if len(known) >= MEMO_MAX:
        known.clear()
    known.add(text)


def check_port_name(field_name: str, value: Any) -> str:
    """A port name (IANA_SVC_NAME), as Service ports, container ports and named targetPorts use."""
    if type(value) is str and value in _VALID_PORT_NAMES:
        return value
    if not isinstance(value, str) or not _PORT_NAME.fullmatch(value) or "--" in value or not any(c.isalpha() for c in value):
        raise ValidationError(
            field_name,
            value,
            "a port name must be 1-15 lower-case letters, digits or '-', with at least one letter, "
            "starting and ending with a letter or digit, and no '--'",
        )
    remember(_VALID_PORT_NAMES, value)
    return value
