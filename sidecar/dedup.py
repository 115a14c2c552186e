"""A bounded memory of recently seen event ids, so an event redelivered by the broker is delivered once."""

from __future__ import annotations

from collections import OrderedDict


class SeenIds:
    """The last `size` keys added; `add` says whether a key is new."""

    __slots__ = ("_keys", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, origin: str, event_id: str) -> bool:
        key = (origin, event_id)
        keys = self._keys
        if key in keys:
            return False
        keys[key] = None
        if len(keys) > self.size:
            keys.popitem(last=False)
        return True
