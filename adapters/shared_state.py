"""Hot state every node shares, in Redis (`REDIS_URL`): the join-token revocation list and the rooms' backlogs.

The store stays the source of truth; Redis makes what one node learns reach the others fast and cheaply:

    {prefix}revoked            sorted set: member "<interview>" (every token of it) or "<interview>/<jti>", score =
                               until (unix s); members past their score are pruned. `adapters.tokens.Revocations`
                               reads it every 0.5 s (the store every 30 s), so a token revoked on one node closes its
                               sessions on every node within a second.
    {prefix}backlog:<id>       list: the room's history as the data channel sent it (finals, revisions, sentiment,
                               alerts), the last `backlog` entries, expiring `backlog_ttl_s` after the last write; a
                               node that takes over a room (adapters.placement) gives late viewers what was said
                               before, sentiment included, where the store has only the finals. With a `key`
                               (the server's, derived from the master key file every node shares) each entry is
                               sealed: transcript text is never in Redis in clear; an entry that does not open
                               makes the backlog "unknown", so the room takes the store's.
    {prefix}transcript:<id>    string: the interview's stored transcript (revisions applied) as the API and the
                               reports read it, with the store stamp it was read at (`domain.commands.
                               transcript_stamp`), sealed like the backlog, expiring `transcript_ttl_s` after it
                               was kept. A reader compares the stamp with the store's current one, so a final or a
                               revision stored by any node makes the entry unused at once, with or without Redis;
                               nothing has to be invalidated in order. Erasure deletes it.

Redis down: every call answers None ("unknown") at once, without waiting for a socket timeout, for `retry_s` after a
failure (a small circuit breaker), and callers fall back to the store or to their own memory; said once per outage
in the log. Backlog appends wait in a bounded queue and are written in order when Redis is back; an interview whose
appends overflowed it has its Redis backlog deleted, so readers take the store's instead of a list with holes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import redis.asyncio
import redis.exceptions

from adapters.crypto import DataKey, Unreadable
from domain.commands import TranscriptStamp
from domain.model import DomainError

log = logging.getLogger(__name__)

T = TypeVar("T")
_FAILURES = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)
_BACKLOG_FIELD = "backlog"  # the sealed entries' associated data
PENDING_LIMIT = 10_000  # backlog entries waiting for Redis; beyond it, that interview's Redis backlog is dropped


def _transcript_field(interview_id: str) -> str:
    """A kept transcript's associated data: an entry copied under another interview's key does not open."""
    return f"transcript:{interview_id}"


def _encode_transcript(stamp: TranscriptStamp, segments: list[dict[str, Any]]) -> dict[str, Any]:
    return {"stamp": list(stamp), "segments": [{**d, "recordedAt": d["recordedAt"].isoformat()} for d in segments]}


def _decode_transcript(entry: dict[str, Any]) -> tuple[TranscriptStamp, list[dict[str, Any]]]:
    n, revisions = entry["stamp"]
    segments = entry["segments"]
    for d in segments:
        d["recordedAt"] = datetime.fromisoformat(d["recordedAt"])
    return (int(n), int(revisions)), segments


class MemoryTranscripts:
    """The transcript cache without Redis: the last `size` transcripts read, in this process."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._kept: OrderedDict[str, tuple[TranscriptStamp, list[dict[str, Any]]]] = OrderedDict()
        self.hits = self.misses = 0

    async def transcript(self, interview_id: str, stamp: TranscriptStamp) -> list[dict[str, Any]] | None:
        kept = self._kept.get(interview_id)
        if kept is None or kept[0] != stamp:
            self.misses += 1
            return None
        self._kept.move_to_end(interview_id)
        self.hits += 1
        return [dict(d) for d in kept[1]]  # the caller may change its copy (not the words inside)

    async def keep_transcript(self, interview_id: str, stamp: TranscriptStamp,
                              segments: list[dict[str, Any]]) -> None:
        self._kept[interview_id] = (stamp, [dict(d) for d in segments])
        self._kept.move_to_end(interview_id)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)

    async def forget_transcript(self, interview_id: str) -> None:
        self._kept.pop(interview_id, None)


class RedisState:
    """The shared hot state on one Redis connection pool."""

    def __init__(self, url: str, *, prefix: str = "interview_worker:", backlog: int = 500,
                 backlog_ttl_s: float = 24 * 3600.0, retry_s: float = 2.0, timeout_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic, key: DataKey | None = None,
                 transcript_ttl_s: float = 3600.0,
                 transcript_key: Callable[[str], Awaitable[DataKey | None]] | None = None) -> None:
        self._key = key
        # A kept transcript is sealed with its candidate's own data key (`MongoStore.interview_key`), not the
        # node's: erasure destroys that key, so a copy in Redis, its snapshots or backups is unreadable at once.
        self._transcript_key = transcript_key
        self.transcript_ttl_s = transcript_ttl_s
        self.hits = self.misses = 0  # transcript cache reads
        self._redis = redis.asyncio.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.prefix = prefix
        self.backlog_size = backlog
        self.backlog_ttl_s = backlog_ttl_s
        self.retry_s = retry_s
        self._clock = clock
        self._down_until = 0.0
        self._failing = False
        self._pending: deque[tuple[str, str]] = deque()
        self._broken: set[str] = set()  # interviews whose appends overflowed: their Redis backlog is deleted
        self._erased: set[str] = set()  # interviews whose kept transcript is to be deleted once Redis answers
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        """False during the `retry_s` after a failure (calls then answer None without trying)."""
        return self._clock() >= self._down_until

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T | None:
        if not self.available:
            return None
        try:
            result = await op()
        except _FAILURES as exc:
            self._down_until = self._clock() + self.retry_s
            if not self._failing:
                self._failing = True
                log.warning("Redis unavailable (%s: %s: %s); using the store and this process's memory until it "
                            "is back", what, type(exc).__name__, exc)
            return None
        if self._failing:
            self._failing = False
            log.info("Redis is back")
        return result

    # ---- revocations (adapters.tokens.SharedRevocations) -------------------------------------------------
    @staticmethod
    def _member(interview_id: str, token_id: str | None) -> str:
        return interview_id if token_id is None else f"{interview_id}/{token_id}"

    async def add_revocations(self, entries: list[tuple[str, str | None]], until: float) -> bool:
        """Adds revocations valid until `until` (unix s); False when Redis could not take them."""
        if not entries:
            return True
        mapping = {self._member(i, t): until for i, t in entries}
        key = self.prefix + "revoked"

        async def add() -> bool:
            # GT: a member already kept longer keeps its later expiry
            await self._redis.zadd(key, mapping, gt=True)
            return True

        return bool(await self._call("revocation", add))

    async def list_revocations(self, now: float) -> list[tuple[str, str | None]] | None:
        """Every revocation not past its expiry, or None when Redis cannot answer."""
        key = self.prefix + "revoked"

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.zrangebyscore(key, now, "+inf")
                return (await pipe.execute())[1]

        members = await self._call("revocations", read)
        if members is None:
            return None
        out: list[tuple[str, str | None]] = []
        for raw in members:
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            interview_id, _, token_id = member.partition("/")
            out.append((interview_id, token_id or None))
        return out

    # ---- room backlogs (adapters.rooms.SharedBacklog) ------------------------------------------------------
    def append_backlog(self, interview_id: str, text: str) -> None:
        """Queues one history entry of the room (written in order by the background writer; never blocks)."""
        if interview_id in self._broken:
            return
        if len(self._pending) >= PENDING_LIMIT:
            self._broken.add(interview_id)
            return
        # sealed once here, so a batch written again after a timed-out reply repeats the same string (see backlog)
        self._pending.append((interview_id, self._key.seal(_BACKLOG_FIELD, text) if self._key is not None else text))
        self._wake.set()

    async def backlog(self, interview_id: str) -> list[str] | None:
        """The room's shared history, oldest first ([] if none); None when Redis cannot answer."""
        key = f"{self.prefix}backlog:{interview_id}"
        if interview_id in self._broken:
            return None

        async def read() -> list[Any]:
            return await self._redis.lrange(key, 0, -1)

        items = await self._call("backlog", read)
        if items is None:
            return None
        # a batch whose reply timed out may have been written all the same, and again on the retry: the entries
        # are distinct messages (each carries its seq and speaker), so a repeat is such a retry
        entries = list(dict.fromkeys(i.decode() if isinstance(i, bytes) else str(i) for i in items))
        if self._key is None:
            return entries
        try:
            return [self._key.open(_BACKLOG_FIELD, e) for e in entries]
        except Unreadable:  # written with another master key file: the store's finals serve instead
            log.warning("Redis backlog of interview %s does not open with this node's master key", interview_id)
            return None

    # ---- the transcript cache (domain.commands.TranscriptCache) -------------------------------------------
    async def transcript(self, interview_id: str, stamp: TranscriptStamp) -> list[dict[str, Any]] | None:
        key = f"{self.prefix}transcript:{interview_id}"

        async def read() -> bytes | str | None:
            return await self._redis.get(key)

        raw = await self._call("transcript cache", read)
        if raw is None or interview_id in self._erased:
            self.misses += 1
            return None
        try:
            sealer = await self._key_of_transcript(interview_id)
            text = raw.decode() if isinstance(raw, bytes) else raw
            entry = sealer.open(_transcript_field(interview_id), text) if sealer is not None else json.loads(text)
            kept_stamp, segments = _decode_transcript(entry)
        except DomainError:  # the candidate was erased (no key any more): nothing to show from here
            self.misses += 1
            return None
        except (Unreadable, ValueError, KeyError, TypeError):  # another key, or not ours: the store's
            log.warning("Redis transcript of interview %s does not open with its key", interview_id)
            self.misses += 1
            return None
        if kept_stamp != stamp:
            self.misses += 1
            return None
        self.hits += 1
        return segments

    async def keep_transcript(self, interview_id: str, stamp: TranscriptStamp,
                              segments: list[dict[str, Any]]) -> None:
        entry = _encode_transcript(stamp, segments)
        try:
            sealer = await self._key_of_transcript(interview_id)
        except DomainError:  # erased meanwhile: nothing is kept
            return
        value = sealer.seal(_transcript_field(interview_id), entry) if sealer is not None \
            else json.dumps(entry, separators=(",", ":"))
        key = f"{self.prefix}transcript:{interview_id}"

        async def write() -> bool:
            return bool(await self._redis.set(key, value, ex=int(self.transcript_ttl_s)))

        await self._call("transcript cache", write)  # not kept: the next read takes the store's again

    async def _key_of_transcript(self, interview_id: str) -> DataKey | None:
        return await self._transcript_key(interview_id) if self._transcript_key is not None else self._key

    async def forget_transcript(self, interview_id: str) -> None:
        key = f"{self.prefix}transcript:{interview_id}"

        async def delete() -> int:
            return await self._redis.delete(key)

        if await self._call("erase transcript", delete) is None:
            self._erased.add(interview_id)  # deleted by the writer once Redis is back
            self._wake.set()

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_backlogs(), name="redis-backlog-writer")

    async def _write_backlogs(self) -> None:
        while True:
            if not self._pending and not self._broken and not self._erased:
                self._wake.clear()
                await self._wake.wait()
            if not self.available:
                await asyncio.sleep(max(0.05, self._down_until - self._clock()))
                continue
            if await self._call("backlog", self._flush) is None:
                continue  # kept: retried once Redis answers again

    async def _flush(self) -> bool:
        erased = list(self._erased)
        if erased:
            await self._redis.delete(*(f"{self.prefix}transcript:{i}" for i in erased))
            self._erased.difference_update(erased)
        broken = list(self._broken)
        if broken:
            await self._redis.delete(*(f"{self.prefix}backlog:{i}" for i in broken))
            self._broken.difference_update(broken)
            # what was queued for them after the overflow would make a list with holes again
            kept = [(i, t) for i, t in self._pending if i not in broken]
            self._pending.clear()
            self._pending.extend(kept)
        batch = [self._pending[k] for k in range(min(len(self._pending), 200))]
        if not batch:
            return True
        async with self._redis.pipeline(transaction=False) as pipe:
            for interview_id in dict.fromkeys(i for i, _ in batch):
                key = f"{self.prefix}backlog:{interview_id}"
                pipe.rpush(key, *(t for i, t in batch if i == interview_id))
                pipe.ltrim(key, -self.backlog_size, -1)
                pipe.expire(key, int(self.backlog_ttl_s))
            await pipe.execute()
        for _ in batch:
            self._pending.popleft()
        return True

    async def flush(self, timeout_s: float = 2.0) -> None:
        """Waits (at most `timeout_s`) until the queued backlog entries are written."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._pending and self._writer is not None and not self._writer.done():
                    self._wake.set()
                    await asyncio.sleep(0.02)  # the writer runs on this loop; it empties the queue in batches

    async def forget(self, interview_id: str) -> None:
        """The interview's candidate is being erased: its shared backlog goes (the store erases the rest)."""
        kept = [(i, t) for i, t in self._pending if i != interview_id]
        self._pending.clear()
        self._pending.extend(kept)

        async def delete() -> int:
            return await self._redis.delete(f"{self.prefix}backlog:{interview_id}")

        if await self._call("erase backlog", delete) is None:
            self._broken.add(interview_id)  # deleted when Redis is back

    async def aclose(self) -> None:
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._pending:
            log.info("Redis: %d backlog entries not written at shutdown (the store has the finals)",
                     len(self._pending))
        await self._redis.aclose()
