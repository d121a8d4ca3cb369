"""Where the dataplane meets the kernel: what pyroute2 and the OS raise becomes :class:`DataplaneError`
with the errno, so the agent handles every kernel failure the same way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2.netlink.exceptions import NetlinkError

from ..errors import DataplaneError


def kernel_error(what: str, err: BaseException) -> DataplaneError:
    """``err`` (pyroute2's NetlinkError or an OSError) as a DataplaneError naming ``what`` failed."""
    code = getattr(err, "code", None) if isinstance(err, NetlinkError) else getattr(err, "errno", None)
    reason = os.strerror(code) if isinstance(code, int) and code > 0 else str(err)
    return DataplaneError(f"cannot {what}: {reason}", code if isinstance(code, int) else None)


@contextmanager
def converted(what: str) -> Iterator[None]:
    """Run the block; a NetlinkError or OSError it raises leaves as a DataplaneError."""
    try:
        yield
    except (NetlinkError, OSError) as err:
        raise kernel_error(what, err) from err
