"""One request's reads, reused within that request only.

An API request reads its interview twice: the access policy needs its organisation and interviewers
(`Api.resource`), then the handler reads it again (and a state change reads it a third time for the outbox fields
its compare-and-replace needs). `scope()` opens a read scope for the current task (a `ContextVar`, so concurrent
requests never share one); inside it, and only in the task that opened it (a task started from a request copies
the request's context, so a background job would otherwise carry the request's reads for its whole life),
`MongoStore` keeps the raw document it read and hands it to the *next* read
of the same interview once, then forgets it. So a retry after a version conflict reads the store again, a
write drops what was kept, and nothing outlives the request: no stale authorization, no cross-request cache.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

# (the task that opened the scope, what it kept)
_scope: ContextVar[tuple[asyncio.Task[Any] | None, dict[Any, Any]] | None] = ContextVar("read_scope", default=None)


def _current() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def _reads() -> dict[Any, Any] | None:
    """This task's scope, if it opened one (a copied context's scope belongs to another task)."""
    held = _scope.get()
    if held is None or held[0] is not _current():
        return None
    return held[1]


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Reads inside share what they read (once each); nesting keeps the outer scope."""
    if _reads() is not None:
        yield
        return
    token = _scope.set((_current(), {}))
    try:
        yield
    finally:
        _scope.reset(token)


def active() -> bool:
    """Whether this task is inside a scope (what is kept is used); outside, a copy to keep is wasted work."""
    return _reads() is not None


def keep(key: Any, value: Any) -> None:
    """Remember `value` for the next `take(key)` in this scope (nothing outside a scope)."""
    reads = _reads()
    if reads is not None:
        reads[key] = value


def take(key: Any) -> Any | None:
    """What was kept under `key` in this scope, removed (None if nothing, or outside a scope)."""
    reads = _reads()
    return reads.pop(key, None) if reads is not None else None


def drop(key: Any) -> None:
    reads = _reads()
    if reads is not None:
        reads.pop(key, None)
