"""Optimizer state that counts its own changes.

``ChainOptimizer`` caches the bucket structure of a step (which state tensors each rule
updates) and reuses it while nothing changed. Checking every state tensor's identity at every
step costs a few hundred dictionary lookups; instead ``optimizer.state`` and each parameter's
state dict count their mutations (assigning, deleting, ``update``, ``pop``, ...) into one
counter, and the cache is valid while the counter stands still. The dicts behave exactly like
torch.optim's ``defaultdict(dict)`` of dicts otherwise, and pickle as plain dicts.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Mapping
from typing import Any


class MutationCounter:
    """A shared, picklable count of state mutations."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class _Counting:
    """The mutators that only count and defer (shared by both tracked dicts)."""

    __slots__ = ()
    _counter: MutationCounter

    def __delitem__(self, key: Any) -> None:
        self._counter.n += 1
        super().__delitem__(key)  # type: ignore[misc]

    def pop(self, *args: Any) -> Any:
        self._counter.n += 1
        return super().pop(*args)  # type: ignore[misc]

    def popitem(self) -> tuple[Any, Any]:
        self._counter.n += 1
        return super().popitem()  # type: ignore[misc]

    def clear(self) -> None:
        self._counter.n += 1
        super().clear()  # type: ignore[misc]


class TrackedDict(_Counting, dict):  # type: ignore[type-arg]
    """A parameter's state dict that counts its mutations (see the module docstring)."""

    __slots__ = ("_counter",)

    def __init__(self, counter: MutationCounter, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counter = counter

    def __setitem__(self, key: Any, value: Any) -> None:
        self._counter.n += 1
        super().__setitem__(key, value)

    def __ior__(self, other: Any) -> TrackedDict:
        self.update(other)
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._counter.n += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._counter.n += 1
        return super().setdefault(key, default)

    def __reduce__(self) -> Any:
        return (dict, (dict(self),))


class TrackedState(_Counting, defaultdict):  # type: ignore[type-arg]
    """``optimizer.state``: a ``defaultdict`` of :class:`TrackedDict` sharing one counter."""

    def __init__(self, counter: MutationCounter,
                 data: Mapping[Any, Mapping[Any, Any]] | None = None) -> None:
        super().__init__(functools.partial(TrackedDict, counter))
        self._counter = counter
        for key, value in (data or {}).items():
            super().__setitem__(key, self._wrap(value))

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, TrackedDict) and value._counter is self._counter:
            return value
        return TrackedDict(self._counter, value) if isinstance(value, Mapping) else value

    def __setitem__(self, key: Any, value: Any) -> None:
        self._counter.n += 1
        super().__setitem__(key, self._wrap(value))

    def __ior__(self, other: Any) -> TrackedState:
        self.update(other)
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._counter.n += 1
        for key, value in dict(*args, **kwargs).items():
            super().__setitem__(key, self._wrap(value))

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._counter.n += 1
        return super().setdefault(key, self._wrap(default))

    def __reduce__(self) -> Any:
        return (_plain_state, (dict(self),))


def _plain_state(data: dict[Any, Any]) -> defaultdict[Any, Any]:
    """What a pickled :class:`TrackedState` loads as (the optimizer wraps it again)."""
    out: defaultdict[Any, Any] = defaultdict(dict)
    out.update(data)
    return out
