"""``svcdns service ...`` and ``svcdns endpoint ...`` (being written)."""


def register(sub, common) -> None:
    return None
