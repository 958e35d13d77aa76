"""What every bus and every consumer share: the subject space, the bus error, and the checks each bus applies.

Both buses (`adapters.nats_bus.JetStreamBus`, the tests' double `testing.memory_bus.InProcessBus`), the outbox relay and the
consumer import these, so the two buses behave alike and a caller catches one error type whichever bus it has.
"""

from __future__ import annotations

from collections import OrderedDict

SUBJECTS = "interviews.>"  # every domain event: interviews.<interviewId>.<event>
DLQ_PREFIX = "dlq."  # dead letters: dlq.<original subject>, outside `SUBJECTS`


class BusUnavailable(Exception):
    """The bus cannot take or deliver messages right now (disconnected, no JetStream, timed out). Retry later."""


def check_subject(subject: str) -> str:
    """A publishable subject: dot-separated non-empty tokens, no wildcards or whitespace."""
    tokens = subject.split(".")
    if not subject or any(not t or t in ("*", ">") or any(c.isspace() for c in t) for t in tokens):
        raise ValueError(
            f"invalid subject {subject!r}: need non-empty dot-separated tokens without wildcards"
        )
    return subject


def check_publish(subject: str, msg_id: str, *, closed: bool) -> None:
    """What every EventBus.publish checks first, whichever bus it is."""
    check_subject(subject)
    if not msg_id:
        raise ValueError("msg_id must be non-empty: it is the de-duplication key")
    if closed:
        raise BusUnavailable("bus is closed")


def check_name(name: str) -> str:
    """A durable consumer name: NATS forbids dots, wildcards and whitespace in it."""
    if not name or any(c in ".*>" or c.isspace() for c in name):
        raise ValueError(f"invalid consumer name {name!r}: no dots, wildcards or whitespace")
    return name


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a trailing `>` is one or more tokens."""
    pt, st = pattern.split("."), subject.split(".")
    for i, p in enumerate(pt):
        if p == ">":
            return len(st) > i
        if i >= len(st) or (p != "*" and p != st[i]):
            return False
    return len(pt) == len(st)


class RecentIds:
    """Bounded set of recently seen ids, oldest forgotten first (a duplicate window measured in ids)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def add(self, key: str) -> None:
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
