"""Labels and equality selectors, as Kubernetes writes them: what a Service's selector picks pods by, and
what ``-l`` selects Services and pods on. Label keys and values once found valid are remembered (a
bounded set): a Service's selector and each of its pods' labels are read again at every change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .validate import ValidationError, remember

Labels = tuple[tuple[str, str], ...]  # sorted (key, value) pairs: hashable, comparable, cheap to index

# Kubernetes' label syntax: an optional DNS-subdomain prefix and '/', then a name of at most 63
# characters; values at most 63 characters, possibly empty; both [A-Za-z0-9] at the ends, -_. inside.
_LABEL_PART = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# label keys and values found valid (see the module doc); cleared when full
_VALID_KEYS: set[str] = set()
_VALID_VALUES: set[str] = set()


def check_label_key(field: str, key: object) -> str:
    if type(key) is str and key in _VALID_KEYS:
        return key
    if not isinstance(key, str) or not key:
        raise ValidationError(field, key, "a label key must be a non-empty string")
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _PREFIX.fullmatch(prefix)):
        raise ValidationError(field, key, "the prefix of a label key must be a DNS subdomain (e.g. example.com/)")
    if not name or not _LABEL_PART.fullmatch(name):
        raise ValidationError(field, key, "a label name must be 1-63 characters [A-Za-z0-9-_.], "
                                          "starting and ending with a letter or digit")  # fmt: skip
    if type(key) is str:
        remember(_VALID_KEYS, key)
    return key


def check_label_value(field: str, value: object) -> str:
    if type(value) is str and value in _VALID_VALUES:
        return value
    if not isinstance(value, str) or not _LABEL_PART.fullmatch(value):
        raise ValidationError(field, value, "a label value must be at most 63 characters [A-Za-z0-9-_.], "
                                            "starting and ending with a letter or digit (or empty)")  # fmt: skip
    if type(value) is str:
        remember(_VALID_VALUES, value)
    return value


def labels_of(data: Mapping[str, str] | Iterable[tuple[str, str]], field: str = "labels") -> Labels:
    """Validated, sorted (key, value) pairs from a mapping or pairs."""
    pairs = data.items() if isinstance(data, Mapping) else data
    out: dict[str, str] = {}
    for key, value in pairs:
        out[check_label_key(f"{field}.{key}", key)] = check_label_value(f"{field}.{key}", value)
    return tuple(sorted(out.items()))


def parse_selector(text: str, field: str = "selector") -> Labels:
    """``app=web,tier=front`` (``==`` also accepted): the equality-based selectors of ``-l`` and
    ``--selector``. An empty text selects nothing on a Service (it has no selector)."""
    pairs: list[tuple[str, str]] = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        key, sep, value = term.replace("==", "=").partition("=")
        if not sep or "!" in key:
            raise ValidationError(field, text, "expected key=value[,key=value...] (equality only), e.g. app=web")
        if any(k == key.strip() and v != value.strip() for k, v in pairs):
            raise ValidationError(field, text, f"label {key.strip()!r} is given two values; no object has both")
        pairs.append((key.strip(), value.strip()))
    return labels_of(pairs, field)


def matches(selector: Labels, labels: Labels) -> bool:
    """Whether ``labels`` hold every pair of a non-empty ``selector`` (an empty one matches nothing,
    as a Service without a selector selects no pod)."""
    if not selector:
        return False
    # both are sorted pairs with one value per key: a pair is held iff it is one of the labels
    # (three calls per pod in a full read: no dict built for each)
    if len(selector) == 1:
        return selector[0] in labels
    return all(pair in labels for pair in selector)
