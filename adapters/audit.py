"""The audit trail: who did what to which resource, when, from where, and how it ended; append-only and
hash-chained in MongoDB.

Contract with the callers (HTTP routes, WHIP, and whatever else acts on personal data)::

    audit.record(AuditEntry(...))   synchronous, O(1), never awaits, never drops; call it on the event loop

`record` appends to an in-memory queue; one background task (`start()`) is the only writer. It takes up to
`batch_size` entries (10) once the oldest has waited `flush_interval_s` (0.25 s) or a batch is full, gives each
its place in its organisation's chain and writes them with one `insert_many` (nx-27017 inserts them one by one,
~0.1 ms of its CPU each). Small batches: at 200 req/s a write every ~50 ms of 10 entries rather than one of ~50
every 250 ms, so building, hashing and encoding a batch holds the event loop ~1 ms, not ~4 ms, at a time (API p95
with auditing on vs off, median over 12 ABBA pairs, three runs each alternating: batches of 10 +1.0 / -6.6 / +22.0 %,
of 200 +19.8 / +65.1 / -3.2 %; noisy, see README). While the store is down the entries stay queued and the
write is retried with backoff (0.1 s doubling to 5 s); `audit_entries_pending` and `audit_write_failures_total`
show it. `aclose()` writes everything still queued (graceful shutdown).

Bounded without dropping: the queue holds at most `max_queue` entries (AUDIT_QUEUE_MAX). Past that, `record`
appends entries to a local append-only file (`spill_path`, one JSON line each, in order; say once as an error,
counted in `audit_entries_spilled_total`), and keeps appending there until the writer has read the file back into
the queue, so the order is kept. `record` cannot await (it runs on the hot path), so it spills rather than
pushes back. What is still queued when `aclose()` gives up on a store that stays down goes to the front of the
file too; the next process replays the file at start, skipping entries the store already holds (by `_id`: a write
whose outcome was unknown). Only a process killed outright loses what was queued in memory (at most `max_queue`).

Chain: one per organisation (`orgId`), so an organisation's log can be filtered, paged and verified alone.
Each document has `seq` (1, 2, ... within its organisation, unique index on (orgId, seq)), `prevHash` (the
previous entry's `hash`, 64 zeros for seq 1) and `hash` = SHA-256 of the canonical JSON (sorted keys, no
spaces, UTF-8) of the document without `_id` and `hash`. A removed entry leaves a gap in `seq`, an edited one
no longer matches its hash, and reordered ones no longer follow their predecessor's hash: `verify()` finds
each. `audit_heads` keeps each chain's last (seq, hash) so that cutting entries off the end is found too; it is
saved at most every `heads_interval_s` (1 s) while entries keep coming, within that of the last write when they
stop, and at `aclose()` (a save cost ~0.7 ms of this process's CPU and ~0.8 ms of nx-27017's, against ~4 ms for
inserting a batch of 40), so what is cut off the end within the last second before the cut may go unnoticed.

Single writer: sequence numbers come from this process's writer task, which reads a chain's head once and then
counts on. A second writer (another process on the same database) collides on the unique (orgId, seq) index:
its insert fails loudly (logged as an error, counted) and it re-reads the head and retries, so the chain
never forks. Every entry has a random `_id` given at `record` time, so a write whose outcome is unknown (the
connection died mid-insert) is checked before it is retried and nothing is written twice.

nx-27017 0.8.1 (the embedded MongoDB) compares dates, and strings that look like dates, to the second: `at` is
stored as an ISO 8601 string with milliseconds for people, `atMs` (Unix milliseconds, an integer) for time
filters, and `seq` orders and pages. No index names `_id` (nx-27017 then fails every insert), and nothing uses
`$push` (it stores subdocuments as strings). Equalities are sent as `{"$eq": v}`: nx-27017 uses its indexes for
those only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pymongo import ASCENDING, DESCENDING, ReplaceOne
from pymongo.errors import BulkWriteError, PyMongoError

from domain.model import Unavailable

if TYPE_CHECKING:
    from motor.motor_asyncio import AsyncIOMotorDatabase
    from starlette.requests import Request

    from adapters.metrics import Metrics

log = logging.getLogger(__name__)

ACTOR_TYPES = ("user", "api_key", "participant", "anonymous")
OUTCOMES = ("ok", "allowed", "denied", "failed")
GENESIS_HASH = "0" * 64
# The organisation of everything until accounts exist: the admin key and join tokens act in it.
DEFAULT_ORG = "default"
MAX_QUERY_LIMIT = 200
_MAX_USER_AGENT = 256
_PLAIN = (str, int, bool, type(None))  # detail values that are JSON as they are (what the routes record)


@dataclass(slots=True, frozen=True)
class AuditEntry:
    """One audited action. `detail` is for context such as a status code, never personal data or secrets."""

    actor_type: str  # user | api_key | participant | anonymous
    actor_id: str
    role: str
    org_id: str
    action: str  # e.g. "get_transcript", "whip.join"
    resource_type: str  # e.g. "interview"
    resource_id: str  # "" for a collection (a list, a create)
    outcome: str  # ok | allowed | denied | failed
    address: str
    user_agent: str
    at: datetime  # UTC
    detail: dict[str, Any] | None = None


@dataclass(slots=True, frozen=True)
class VerifyResult:
    ok: bool
    entries: int  # entries checked
    first_bad: int | None  # seq of the first entry where its chain breaks
    reason: str


def entry_hash(doc: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a stored entry without `_id` and `hash`."""
    body = {k: v for k, v in doc.items() if k not in ("_id", "hash")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _iso_ms(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _document(entry_id: str, e: AuditEntry, seq: int, prev_hash: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "orgId": e.org_id, "seq": seq, "prevHash": prev_hash, "at": _iso_ms(e.at), "atMs": _epoch_ms(e.at),
        "actorType": e.actor_type, "actorId": e.actor_id, "role": e.role, "action": e.action,
        "resourceType": e.resource_type, "resourceId": e.resource_id, "outcome": e.outcome,
        "address": e.address, "userAgent": e.user_agent, "detail": e.detail,
    }
    doc["hash"] = entry_hash(doc)
    doc["_id"] = entry_id
    return doc


def outcome_of(status: int) -> str:
    """The outcome of an HTTP request by its status: 2xx/3xx ok, 401/403 denied, anything else failed."""
    if status < 400:
        return "ok"
    return "denied" if status in (401, 403) else "failed"


def request_entry(request: Request, *, action: str, outcome: str, actor_type: str = "anonymous",
                  actor_id: str = "", role: str = "", org_id: str = DEFAULT_ORG, resource_type: str = "",
                  resource_id: str = "", detail: dict[str, Any] | None = None) -> AuditEntry:
    """An entry for an HTTP request: the caller's address and user agent come from `request`; the resource, unless
    given, from its path parameters (`interview_id`, `candidate_id`) or its collection (`/api/interviews`)."""
    params = request.path_params
    if not resource_type:
        if "interview_id" in params:
            resource_type, resource_id = "interview", str(params["interview_id"])
        elif "candidate_id" in params:
            resource_type, resource_id = "candidate", str(params["candidate_id"])
        else:
            parts = request.url.path.strip("/").split("/")
            resource_type = parts[1].removesuffix("s") if len(parts) > 1 and parts[0] == "api" else parts[0]
    return AuditEntry(
        actor_type=actor_type, actor_id=actor_id, role=role, org_id=org_id, action=action,
        resource_type=resource_type, resource_id=resource_id, outcome=outcome,
        address=request.client.host if request.client else "",
        user_agent=request.headers.get("user-agent", "")[:_MAX_USER_AGENT], at=datetime.now(UTC), detail=detail)


def _check(entry: AuditEntry) -> None:
    if entry.actor_type not in ACTOR_TYPES:
        raise ValueError(f"audit entry: actor_type {entry.actor_type!r} is not one of {ACTOR_TYPES}")
    if entry.outcome not in OUTCOMES:
        raise ValueError(f"audit entry: outcome {entry.outcome!r} is not one of {OUTCOMES}")
    if entry.at.tzinfo is None:
        raise ValueError("audit entry: `at` must be timezone-aware")
    if not entry.org_id or not entry.action:
        raise ValueError("audit entry: org_id and action are required")
    if entry.detail is not None and not all(type(k) is str and type(v) in _PLAIN for k, v in entry.detail.items()):
        try:  # what cannot be hashed must fail here, at its caller, not later in the writer
            json.dumps(entry.detail, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"audit entry: detail is not plain JSON ({exc})") from None


def _spill_line(entry_id: str, e: AuditEntry) -> str:
    return json.dumps({"id": entry_id, "actor_type": e.actor_type, "actor_id": e.actor_id, "role": e.role,
                       "org_id": e.org_id, "action": e.action, "resource_type": e.resource_type,
                       "resource_id": e.resource_id, "outcome": e.outcome, "address": e.address,
                       "user_agent": e.user_agent, "at": e.at.isoformat(), "detail": e.detail},
                      ensure_ascii=False, separators=(",", ":")) + "\n"


def _from_spill_line(line: str) -> tuple[str, AuditEntry]:
    d = json.loads(line)
    entry_id = d.pop("id")
    return entry_id, AuditEntry(**{**d, "at": datetime.fromisoformat(d["at"])})


class SpillFile:
    """Audit entries past the in-memory bound, one JSON line each, in order (mode 0600: it holds addresses and
    user agents like the store does). Appended by `record`, read back by the writer (`peek` then `commit`, so a
    chunk is consumed only once it is queued), removed once all is read. `inherited` counts the lines an earlier
    process left (or this one saved at shutdown), which may be in the store already."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out: IO[str] | None = None
        self._offset = 0  # bytes of the file read back
        self.unread = 0
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        if data and not data.endswith(b"\n"):  # a process killed mid-line: that entry is lost, say so
            log.error("audit trail: %s ends with a partial entry (a process was killed while writing it); "
                      "dropping that line", path)
            data = data[:data.rfind(b"\n") + 1]
            self._rewrite(data)
        self.unread = self.inherited = data.count(b"\n")

    def _rewrite(self, data: bytes) -> None:
        self.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._offset = 0

    def append(self, items: list[tuple[str, AuditEntry]]) -> None:
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._out = os.fdopen(fd, "a", encoding="utf-8")
        self._out.write("".join(_spill_line(i, e) for i, e in items))
        self._out.flush()  # to the kernel: a crash of this process loses none of it
        self.unread += len(items)

    def prepend(self, items: list[tuple[str, AuditEntry]]) -> None:
        """`items` (older than everything unread) at the front of what is left to read."""
        rest = self._read_rest()
        self._rewrite("".join(_spill_line(i, e) for i, e in items).encode() + rest)
        self.unread += len(items)
        self.inherited = self.unread

    def _read_rest(self) -> bytes:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                return fh.read()
        except FileNotFoundError:
            return b""

    def peek(self, n: int) -> tuple[list[tuple[str, AuditEntry]], int, int]:
        """Up to `n` entries from where reading stopped, the offset after them and the lines read (for `commit`).
        A line that does not parse (damaged on disk) is skipped with an error log: it must not stop the writer."""
        items: list[tuple[str, AuditEntry]] = []
        lines = 0
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below; absent is "nothing to read"
        except FileNotFoundError:
            return items, self._offset, lines
        with fh:
            fh.seek(self._offset)
            while lines < n:
                line = fh.readline()
                if not line.endswith(b"\n"):
                    break
                lines += 1
                try:
                    items.append(_from_spill_line(line.decode()))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:  # (personal data: not logged)
                    log.error("audit trail: %s holds a damaged entry (%s); skipping it", self.path,
                              type(exc).__name__)
            return items, fh.tell(), lines

    def commit(self, offset: int, n: int) -> None:
        self._offset = offset
        self.unread -= n
        self.inherited = max(0, self.inherited - n)
        if self.unread <= 0:
            self.close()
            self.path.unlink(missing_ok=True)
            self._offset = self.unread = self.inherited = 0

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


class AuditLog:
    """The audit trail in `db["audit"]` (and the chain heads in `db["audit_heads"]`); see the module docstring."""

    def __init__(self, db: AsyncIOMotorDatabase[Any], *, metrics: Metrics | None = None, batch_size: int = 10,
                 flush_interval_s: float = 0.25, max_backoff_s: float = 5.0, max_queue: int = 100_000,
                 spill_path: Path | None = None, heads_interval_s: float = 1.0) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.entries = db["audit"]
        self.heads = db["audit_heads"]
        self.metrics = metrics
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_backoff_s = max_backoff_s
        self.max_queue = max_queue
        self.heads_interval_s = heads_interval_s
        # without a file, entries past max_queue stay queued (said once): never dropped, but not bounded either
        self._spill = SpillFile(spill_path) if spill_path is not None else None
        # the current overflow was reported (what an earlier process left is reported by `start`)
        self._overflowing = self._spill is not None and self._spill.unread > 0
        self.spilled = 0
        self._queue: deque[tuple[str, AuditEntry]] = deque()
        self._heads: dict[str, tuple[int, str]] = {}  # orgId -> (seq, hash) of the last entry written
        self._unsaved: dict[str, tuple[int, str]] = {}  # chain heads written since audit_heads was last saved
        self._heads_due = 0.0  # monotonic time after which a write saves audit_heads
        self._uncertain = False  # the last write failed without saying what it wrote
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._progress = asyncio.Event()  # set (and replaced) after every write attempt
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._hurry = 0  # callers of flush() waiting: the writer does not wait for the interval
        self.written = 0
        self.batches = 0  # successful batch writes (written / batches: the batch size the load gave)
        self.failures = 0
        self.last_error = ""
        if metrics is not None:
            metrics.audit_pending.set_function(lambda: float(self.pending))

    @property
    def queued(self) -> int:
        """Entries held in memory."""
        return len(self._queue)

    @property
    def pending(self) -> int:
        """Entries recorded and not yet written (in memory and in the spill file)."""
        return len(self._queue) + (self._spill.unread if self._spill is not None else 0)

    @property
    def heads_unsaved(self) -> int:
        """Chains written to since their head was last saved to `audit_heads`."""
        return len(self._unsaved)

    def status(self) -> dict[str, Any]:
        """For /readyz: the writer's state (a backlog does not make the service unready)."""
        return {"running": self._task is not None and not self._task.done(), "pending": self.pending,
                "written": self.written, "failures": self.failures, "last_error": self.last_error}

    # ---- recording -----------------------------------------------------------------------------------
    def record(self, entry: AuditEntry) -> None:
        """Queue `entry` for writing. Raises ValueError for a malformed entry (a caller's bug)."""
        _check(entry)
        if self._closed:
            # Nobody will write it: say so loudly rather than pretend.
            log.error("audit entry recorded after the audit log closed, not written: %s %s/%s by %s:%s",
                      entry.action, entry.resource_type, entry.resource_id, entry.actor_type, entry.actor_id)
            if self.metrics is not None:
                self.metrics.audit_failures.inc()
            return
        item = (os.urandom(12).hex(), entry)
        if len(self._queue) >= self.max_queue or (self._spill is not None and self._spill.unread):
            self._overflow(item)
        else:
            self._queue.append(item)
        self._wake.set()
        if len(self._queue) >= self.batch_size:
            self._full.set()

    def _overflow(self, item: tuple[str, AuditEntry]) -> None:
        """`item` past the queue's bound (or behind entries already spilled): to the spill file, in order."""
        spilled = False
        if self._spill is not None:
            try:
                self._spill.append([item])
                spilled = True
            except OSError:
                log.exception("audit trail: cannot write the spill file %s; keeping the entry in memory",
                              self._spill.path)
        if not spilled:
            self._queue.append(item)  # never dropped
        else:
            self.spilled += 1
            if self.metrics is not None:
                self.metrics.audit_spilled.inc()
        if not self._overflowing:
            self._overflowing = True
            log.error("audit trail: %d entries queued, the store is down or not keeping up; %s until it catches up "
                      "(nothing is dropped)", len(self._queue),
                      f"spilling to {self._spill.path}" if spilled and self._spill else "queueing past AUDIT_QUEUE_MAX")

    async def start(self) -> None:
        """Create the indexes and start the writer (which first replays what an earlier process spilled)."""
        if self._spill is not None and self._spill.unread:
            log.warning("audit trail: %d entries an earlier process left in %s are written first",
                        self._spill.unread, self._spill.path)
        try:
            # Few indexes: each costs every insert (nx-27017: ~0.12 ms/entry with one, ~0.16 with four). A time
            # window is read along (orgId, seq): entries are in time order within a chain.
            await self.entries.create_index([("orgId", ASCENDING), ("seq", ASCENDING)], unique=True)
            await self.entries.create_index([("orgId", ASCENDING), ("actorId", ASCENDING), ("seq", ASCENDING)])
            await self.entries.create_index([("orgId", ASCENDING), ("resourceId", ASCENDING), ("seq", ASCENDING)])
        except PyMongoError as exc:
            raise Unavailable(f"audit trail: cannot create indexes ({type(exc).__name__}: {exc})") from exc
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def aclose(self, timeout_s: float | None = 30.0) -> None:
        """Write everything queued, then stop. If the store stays down for `timeout_s`, the entries still queued
        are reported (logged as an error with their count) and the writer stops."""
        self._closing = True
        self._wake.set()
        self._full.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._save_queue_for_next_start()
        elif self._queue:
            self._save_queue_for_next_start()
        self._closed = True
        if self._spill is not None:
            self._spill.close()

    def _save_queue_for_next_start(self) -> None:
        """At shutdown with the store down: the queue goes to the front of the spill file (the next start writes
        it), or, without a file, is reported lost."""
        if not self._queue:
            return
        if self._spill is not None:
            try:
                self._spill.prepend(list(self._queue))
                self._queue.clear()
                log.error("audit trail: the store stayed down (%s); %d entries saved to %s for the next start",
                          self.last_error, self.pending, self._spill.path)
                return
            except OSError:
                log.exception("audit trail: cannot write the spill file %s", self._spill.path)
        log.error("audit trail: %d entries could not be written before shutdown (store: %s)", len(self._queue),
                  self.last_error)

    # ---- the writer ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.1
        while True:
            if self._spill is not None and self._spill.unread and len(self._queue) < self.batch_size:
                try:
                    await self._refill()
                except PyMongoError as exc:  # checking a replayed chunk against the store: later
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    self._progressed()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
            if not self._queue:
                if self._spill is not None and self._spill.unread:
                    continue  # that chunk was all in the store already: the next one
                if self._closing:
                    await self._save_heads()
                    return
                self._wake.clear()
                if not self._unsaved:
                    await self._wake.wait()
                    continue
                with contextlib.suppress(TimeoutError):  # idle: the heads are saved once they are due
                    async with asyncio.timeout(max(0.0, self._heads_due - time.monotonic())):
                        await self._wake.wait()
                if not self._wake.is_set():
                    await self._save_heads()
                continue
            if len(self._queue) < self.batch_size and not self._closing and not self._hurry:
                self._full.clear()
                with contextlib.suppress(TimeoutError):  # the oldest entry waits at most flush_interval_s
                    async with asyncio.timeout(self.flush_interval_s):
                        await self._full.wait()
            try:
                await self._write_batch()
                backoff = 0.1
                self._progressed()
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any failure: entries stay queued
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.metrics is not None:
                    self.metrics.audit_failures.inc()
                if isinstance(exc, PyMongoError):
                    log.warning("audit trail: write failed, %d entries queued, retrying in %.1f s: %s",
                                len(self._queue), backoff, self.last_error)
                else:
                    log.exception("audit trail: write failed unexpectedly, %d entries queued, retrying in %.1f s",
                                  len(self._queue), backoff)
                self._progressed()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _refill(self) -> None:
        """The next entries of the spill file into the queue, in order. Entries an earlier process left may be in
        the store already (its last write's outcome was unknown): those are skipped by `_id`."""
        assert self._spill is not None
        want = min(self.max_queue - len(self._queue), 10 * self.batch_size)
        if want <= 0:
            return
        chunk, offset, lines = self._spill.peek(want)
        if not lines:  # the file lost lines it should hold (removed or cut by hand): nothing more to read
            log.error("audit trail: %s ended %d entries early", self._spill.path, self._spill.unread)
            self._spill.commit(offset, self._spill.unread)
            return
        if self._spill.inherited:
            ids = [i for i, _ in chunk[:self._spill.inherited]]
            found = {d["_id"] async for d in self.entries.find({"_id": {"$in": ids}}, {"_id": 1})}
            if found:
                log.info("audit trail: %d replayed entries were stored already", len(found))
            kept = [item for item in chunk if item[0] not in found]
        else:
            kept = chunk
        self._spill.commit(offset, lines)
        self._queue.extend(kept)
        if not self._spill.unread:
            self._overflowing = False
            log.info("audit trail: spill file replayed; back to the in-memory queue")

    async def flush(self) -> None:
        """Returns once everything recorded so far is written, without waiting for the flush interval (for
        benchmarks that count the writes' CPU; the writer's schedule is otherwise its own)."""
        target = self.written + self.pending
        self._hurry += 1
        try:
            while self.written < target and self._task is not None and not self._task.done():
                self._full.set()
                await self._progress.wait()
        finally:
            self._hurry -= 1

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait_until(self, predicate: Callable[[AuditLog], bool]) -> None:
        """Returns once `predicate(self)` holds, checked after every write attempt (for tests and benchmarks)."""
        while not predicate(self):
            await self._progress.wait()

    async def _write_batch(self) -> None:
        if self._uncertain:
            await self._drop_written()
        batch = [self._queue[i] for i in range(min(self.batch_size, len(self._queue)))]
        if not batch:
            return
        for org in {e.org_id for _, e in batch} - self._heads.keys():
            last = await self.entries.find_one({"orgId": {"$eq": org}}, {"seq": 1, "hash": 1},
                                               sort=[("seq", DESCENDING)])
            self._heads[org] = (int(last["seq"]), str(last["hash"])) if last else (0, GENESIS_HASH)
        heads = dict(self._heads)
        docs = []
        for entry_id, e in batch:
            seq, prev = heads[e.org_id]
            doc = _document(entry_id, e, seq + 1, prev)
            heads[e.org_id] = (seq + 1, doc["hash"])
            docs.append(doc)
        try:
            await self.entries.insert_many(docs, ordered=True)
        except BulkWriteError as exc:
            # Ordered: the first nInserted are in, the rest are not. A duplicate (orgId, seq) means another
            # writer appended to a chain: take its entries as the new head and chain ours after them.
            done = int(exc.details.get("nInserted", 0))
            self._written(docs[:done])
            self._heads.clear()
            codes = {err.get("code") for err in exc.details.get("writeErrors", [])}
            if 11000 in codes:
                log.error("audit trail: another writer appended to the chain (duplicate orgId/seq); this process "
                          "must be the only writer of database %s; re-reading the head and retrying",
                          self.entries.database.name)
            raise
        except Exception:
            self._uncertain = True  # what it wrote, if anything, is checked by id before the retry
            self._heads.clear()
            raise
        self._written(docs)
        self.batches += 1
        self._heads.update(heads)
        for org in {d["orgId"] for d in docs}:
            self._unsaved[org] = heads[org]
        if time.monotonic() >= self._heads_due:
            await self._save_heads()

    def _written(self, docs: list[dict[str, Any]]) -> None:
        for _ in docs:
            self._queue.popleft()
        self.written += len(docs)
        if self.metrics is not None and docs:
            self.metrics.audit_written.inc(len(docs))

    async def _drop_written(self) -> None:
        """After a write with an unknown outcome: drop from the queue what it did write."""
        ids = [self._queue[i][0] for i in range(min(self.batch_size, len(self._queue)))]
        found = {d["_id"] async for d in self.entries.find({"_id": {"$in": ids}}, {"_id": 1})}
        self._uncertain = False
        kept = [item for item in self._queue if item[0] not in found]
        if found:
            log.info("audit trail: %d entries of the failed write were stored after all", len(found))
            self.written += len(found)
            if self.metrics is not None:
                self.metrics.audit_written.inc(len(found))
            self._queue = deque(kept)

    async def _save_heads(self) -> None:
        """The last (seq, hash) of each chain written to since the last save, so that verify finds entries cut
        off the end. A failure here loses nothing (they are saved with a later batch, or when the writer idles or
        stops); verify accepts a head that lags behind its chain."""
        self._heads_due = time.monotonic() + self.heads_interval_s
        if not self._unsaved:
            return
        saving = dict(self._unsaved)
        # `_id` in the replacement too: nx-27017 0.8.1 gives an upserted replacement a new random `_id` otherwise
        ops = [ReplaceOne({"_id": org}, {"_id": org, "seq": seq, "hash": h}, upsert=True)
               for org, (seq, h) in sorted(saving.items())]
        try:
            await self.heads.bulk_write(ops, ordered=False)
        except Exception as exc:  # noqa: BLE001 - also called outside the writer's retry loop, which must go on
            if self._closing:  # the last chance: a tail cut before the next start would go unnoticed
                log.error("audit trail: chain heads not saved at shutdown: %s: %s", type(exc).__name__, exc)
            else:
                log.warning("audit trail: chain heads not saved (retried within %.0f s): %s: %s",
                            self.heads_interval_s, type(exc).__name__, exc)
            self._progressed()  # a write attempt too: `wait_until` callers see it failed
            return
        for org, head in saving.items():
            if self._unsaved.get(org) == head:  # (a write may have moved it on meanwhile)
                del self._unsaved[org]
        self._progressed()

    # ---- reading -------------------------------------------------------------------------------------
    async def query(self, *, org_id: str, actor: str | None = None, resource: str | None = None,
                    start: datetime | None = None, end: datetime | None = None, cursor: str | None = None,
                    limit: int = 50) -> tuple[list[dict[str, Any]], str | None]:
        """One organisation's entries, **newest first** (by `seq`), and the cursor of the next page (None at the
        end). `actor` matches `actorId`, `resource` matches `resourceId`; `start` is inclusive and `end`
        exclusive (to the millisecond). Entries appear once written (within about `flush_interval_s`).
        Raises ValueError for a bad cursor or limit, Unavailable when the store is down."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be an integer from 1 to {MAX_QUERY_LIMIT}")
        # `$eq`, not a plain equality: the same match for these scalar fields, but nx-27017 serves only `$eq` from
        # the (orgId, actorId|resourceId, seq) indexes (20 000 entries: 10.6 vs 100 ms for an actor's page, an
        # actor with no entries 2.1 vs 81 ms); a plain equality is an array-aware test of every entry
        filt: dict[str, Any] = {"orgId": {"$eq": org_id}}
        if actor:
            filt["actorId"] = {"$eq": actor}
        if resource:
            filt["resourceId"] = {"$eq": resource}
        window: dict[str, int] = {}
        for op, at in (("$gte", start), ("$lt", end)):
            if at is not None:
                if at.tzinfo is None:
                    raise ValueError("start and end must be timezone-aware")
                window[op] = _epoch_ms(at)
        if window:
            filt["atMs"] = window
        if cursor is not None:
            if not cursor.isdigit() or int(cursor) < 1:
                raise ValueError("cursor is not one this endpoint returned")
            filt["seq"] = {"$lt": int(cursor)}
        try:
            docs = await self.entries.find(filt, {"_id": 0}).sort("seq", DESCENDING).limit(limit + 1).to_list(None)
        except PyMongoError as exc:
            raise Unavailable(f"audit trail: {type(exc).__name__}: {exc}") from exc
        more = len(docs) > limit
        docs = docs[:limit]
        return docs, (str(docs[-1]["seq"]) if more else None)

    async def verify(self, org_id: str | None = None) -> VerifyResult:
        """Checks every chain (or `org_id`'s): seq counts 1, 2, ... without gaps, each entry's `prevHash` is its
        predecessor's `hash`, each `hash` matches its content, and no chain ends before its saved head."""
        filt: dict[str, Any] = {} if org_id is None else {"orgId": {"$eq": org_id}}
        try:
            heads = {d["_id"]: (int(d["seq"]), str(d["hash"]))
                     async for d in self.heads.find({} if org_id is None else {"_id": org_id})}
            n = 0
            seen: set[str] = set()
            org = ""
            expected, prev, last = 1, GENESIS_HASH, 0
            async for doc in self.entries.find(filt).sort([("orgId", ASCENDING), ("seq", ASCENDING)]):
                n += 1
                if doc.get("orgId") != org:
                    if seen and (bad := _cut_off(org, last, heads)) is not None:
                        return VerifyResult(False, n - 1, *bad)
                    org, expected, prev = str(doc.get("orgId")), 1, GENESIS_HASH
                    seen.add(org)
                seq = doc.get("seq")
                if seq != expected:
                    return VerifyResult(False, n, expected, f"chain {org}: expected seq {expected}, found {seq} "
                                        "(entries removed or reordered)")
                if doc.get("prevHash") != prev:
                    return VerifyResult(False, n, expected, f"chain {org}: seq {seq} does not follow seq "
                                        f"{expected - 1} (prevHash differs: entries removed, reordered or edited)")
                if entry_hash(doc) != doc.get("hash"):
                    return VerifyResult(False, n, expected, f"chain {org}: seq {seq} was changed after it was "
                                        "written (hash differs)")
                if org in heads and heads[org][0] == seq and heads[org][1] != doc["hash"]:
                    return VerifyResult(False, n, expected, f"chain {org}: seq {seq} is not the entry the chain "
                                        "head recorded")
                prev, last, expected = doc["hash"], seq, expected + 1
            if seen and (bad := _cut_off(org, last, heads)) is not None:
                return VerifyResult(False, n, *bad)
            if gone := sorted(heads.keys() - seen):
                return VerifyResult(False, n, 1, f"chain {gone[0]}: all {heads[gone[0]][0]} entries are missing")
        except PyMongoError as exc:
            raise Unavailable(f"audit trail: {type(exc).__name__}: {exc}") from exc
        chains = len(seen)
        return VerifyResult(True, n, None, f"{n} entries in {chains} chain(s) intact")


async def move_trail(old: AsyncIOMotorDatabase[Any], new: AsyncIOMotorDatabase[Any], *, batch: int = 1000) -> int:
    """Move a trail an older version kept in the service's own database (`old`) into the audit database (`new`),
    documents unchanged (same `_id`, `seq` and hashes, so the chains still verify). Idempotent and never loses an
    entry: only what reached `new` is deleted from `old` (a start cut short finishes the move on the next), a
    chain head is copied only where `new` holds none or an older one, and an entry that cannot move (its
    (orgId, seq) is taken in `new`: a node of the older version kept writing during an upgrade, which forks that
    chain) stays in `old`, said once as an error, and the server starts anyway. Returns the entries moved.
    Upgrade with every node of the older version stopped."""
    if old.name == new.name:
        return 0
    moved = stuck = 0
    try:
        source, target = old["audit"], new["audit"]
        if await source.estimated_document_count():
            docs: list[dict[str, Any]] = []
            async for doc in source.find({}):
                docs.append(doc)
                if len(docs) >= batch:
                    m, n = await _move_batch(source, target, docs)
                    moved, stuck, docs = moved + m, stuck + n, []
            if docs:
                m, n = await _move_batch(source, target, docs)
                moved, stuck = moved + m, stuck + n
        async for head in old["audit_heads"].find({}):
            newer = await new["audit_heads"].find_one({"_id": head["_id"]})
            if newer is None or int(newer.get("seq", 0)) < int(head.get("seq", 0)):
                await new["audit_heads"].replace_one({"_id": head["_id"]}, head, upsert=True)
        if not stuck:
            await source.drop()
            await old["audit_heads"].drop()
    except PyMongoError as exc:
        raise Unavailable(f"audit trail: cannot move it to database {new.name} ({type(exc).__name__}: {exc})") from exc
    if moved:
        log.warning("audit trail: moved %d entries from database %s to %s", moved, old.name, new.name)
    if stuck:
        log.error("audit trail: %d entries in database %s could not move to %s (their seq is taken there: was a "
                  "node of the older version still writing?); they stay where they are", stuck, old.name, new.name)
    return moved


async def _move_batch(source: Any, target: Any, docs: list[dict[str, Any]]) -> tuple[int, int]:
    """Upsert `docs` into `target` by `_id`, delete from `source` those that are now there: (moved, stuck)."""
    ops = [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs]
    failed: set[int] = set()
    try:
        await target.bulk_write(ops, ordered=False)
    except BulkWriteError as exc:
        failed = {int(e["index"]) for e in exc.details.get("writeErrors", [])}
    done = [d["_id"] for i, d in enumerate(docs) if i not in failed]
    if done:
        await source.delete_many({"_id": {"$in": done}})
    return len(done), len(failed)


def _cut_off(org: str, last: int, heads: dict[str, tuple[int, str]]) -> tuple[int, str] | None:
    head = heads.get(org)
    if head is not None and head[0] > last:
        return last + 1, f"chain {org}: entries {last + 1} to {head[0]} are missing (cut off the end)"
    return None
