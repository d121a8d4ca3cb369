"""The embedded registry: a directory of service files, one Service per file.

- :mod:`.tree`: which names are service files, walking the directory, reading a file within limits;
- :mod:`.store`: the VIP allocation store, the writer lock and atomic writes (in ``.svcdns/``);
- :mod:`.registry`: :class:`FileRegistry`, files -> Services with their VIPs, and the CLI's writes;
- :mod:`.watch`: :class:`FileWatcher`, inotify: a new snapshot per change.
"""

from .registry import FileRegistry
from .tree import is_service_file
from .watch import FileWatcher

__all__ = ["FileRegistry", "FileWatcher", "is_service_file"]
