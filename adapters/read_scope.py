"""One request's reads, reused within that request only.

An API request reads its interview twice: the access policy needs its organisation and interviewers
(`Api.resource`), then the handler reads it again (and a state change reads it a third time for the outbox fields
its compare-and-replace needs). `scope()` opens a read scope for the current task (a `ContextVar`, so concurrent
requests never share one); inside it `MongoStore` keeps the raw document it read and hands it to the *next* read
of the same interview once, then forgets it. So a retry after a version conflict reads the store again, a
write drops what was kept, and nothing outlives the request: no stale authorization, no cross-request cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_reads: ContextVar[dict[Any, Any] | None] = ContextVar("read_scope", default=None)


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Reads inside share what they read (once each); nesting keeps the outer scope."""
    if _reads.get() is not None:
        yield
        return
    token = _reads.set({})
    try:
        yield
    finally:
        _reads.reset(token)


def keep(key: Any, value: Any) -> None:
    """Remember `value` for the next `take(key)` in this scope (nothing outside a scope)."""
    reads = _reads.get()
    if reads is not None:
        reads[key] = value


def take(key: Any) -> Any | None:
    """What was kept under `key` in this scope, removed (None if nothing, or outside a scope)."""
    reads = _reads.get()
    return reads.pop(key, None) if reads is not None else None


def drop(key: Any) -> None:
    reads = _reads.get()
    if reads is not None:
        reads.pop(key, None)
