"""The embedded registry: a directory of service files, one Service per file.

- :mod:`.tree`: which names are service files, walking the directory, reading a file within limits;
- :mod:`.store`: the VIP allocation store, the writer lock and atomic writes (in ``.svcdns/``);
- :mod:`.pods`: pod files (``pods/<ns>/<name>.yaml``);
- :mod:`.vips`: the Services' VIPs (allocated, re-claimed, released as files come and go);
- :mod:`.state`: files -> the consistent state (reading, the derivation, building the table);
- :mod:`.registry`: :class:`FileRegistry`, that state plus the CLI's writes;
- :mod:`.watch`: :class:`FileWatcher`, inotify: a new snapshot per change.
"""

from .registry import FileRegistry
from .tree import is_service_file
from .watch import FileWatcher

__all__ = ["FileRegistry", "FileWatcher", "is_service_file"]
