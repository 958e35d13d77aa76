"""Which node holds each interview's room, in the NATS KV bucket `room-placement` (the bus's NATS: the embedded
nats-server by default, a cluster's with `NATS_URL`).

Key = interview id, value = `{"node": NODE_ID, "url": the node's public base URL}`. The bucket keeps one value per
key and ages every key out `ttl_s` after its last write, so a node that dies (`kill -9`, a lost machine) loses its
rooms after at most `ttl_s`; a live node rewrites its keys every `ttl_s / 3` (a write that expects the revision it
last wrote, so a key another node has taken since is never overwritten).

`claim(interview)` on a WHIP POST: `create` (atomic: exactly one node wins a free key) or read the owner. None means
"this node holds the room"; an `Owner` is where the WHIP client is redirected (307, RFC 9725 section 4.5). A claim
whose room never opened here (the POST failed after claiming) is released by the next heartbeat after `ttl_s`; a
room that closes releases its key at once. `drain()` (SIGTERM) keeps the keys while the streams drain and their
finals are stored, `release_all()` then deletes them, so participants who re-POST land on another node, which
continues each participant's numbering from the store's highest seq (adapters.rooms).

NATS unreachable: the claim is local (logged once); the heartbeat creates the key once NATS is back, and if another
node took the room meanwhile, `on_lost` ends this node's sessions of it so its participants re-POST to the owner.
One claim costs one KV create on a new room (one round trip to NATS) and nothing on a room this node holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

import nats.errors
import nats.js.errors

from adapters.bus import BusUnavailable

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from adapters.nats_bus import JetStreamBus

log = logging.getLogger(__name__)

BUCKET = "room-placement"
_TRANSIENT = (nats.errors.Error, asyncio.TimeoutError, OSError, BusUnavailable)


@dataclass(frozen=True, slots=True)
class Owner:
    """The node holding a room: its id and public base URL (no trailing slash)."""

    node_id: str
    url: str

    def whip_url(self, interview_id: str) -> str:
        return f"{self.url}/whip/{quote(interview_id, safe='')}"

    def encode(self) -> bytes:
        return json.dumps({"node": self.node_id, "url": self.url}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> Owner:
        try:
            doc = json.loads(data or b"")
            return cls(str(doc["node"]), str(doc.get("url") or "").rstrip("/"))
        except (ValueError, KeyError, TypeError):
            return cls("", "")  # not ours to read: treated as a foreign owner without an address


@dataclass(slots=True, eq=False)
class _Held:
    revision: int  # 0: claimed while NATS was unreachable, not written yet
    claimed_at: float
    closing: bool = False  # its room closed; the key is being deleted unless a new claim comes first


class Placement:
    """This node's claims in the placement bucket. `live(interview)` says whether its room is open here."""

    def __init__(self, bus: JetStreamBus, me: Owner, *, live: Callable[[str], bool], ttl_s: float = 15.0,
                 on_lost: Callable[[str], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s < 1.0:
            raise ValueError("the placement TTL must be at least 1 s")
        self.bus = bus
        self.me = me
        self.ttl_s = ttl_s
        self.live = live
        self.on_lost = on_lost
        self._clock = clock
        self._kv: KeyValue | None = None
        self._held: dict[str, _Held] = {}
        self._task: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self._draining = False
        self._failing = False
        self.redirects = 0

    @property
    def held(self) -> list[str]:
        return list(self._held)

    def start(self) -> None:
        self._task = asyncio.create_task(self._heartbeat(), name="placement-heartbeat")

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.bus.key_value(BUCKET, ttl_s=self.ttl_s)
        return self._kv

    async def claim(self, interview_id: str) -> Owner | None:
        """None if this node holds (or now took) the room; else the live node that does."""
        held = self._held.get(interview_id)
        if held is not None and not held.closing:
            return None
        if held is not None:  # its room closed a moment ago and reopens: claimed afresh, not deleted
            del self._held[interview_id]
        try:
            kv = await self._bucket()
            owner = await self._create_or_read(kv, interview_id)
        except _TRANSIENT as exc:
            self._failed(exc)
            self._held[interview_id] = _Held(0, self._clock())
            return None
        self._failing = False
        if owner is not None:
            self.redirects += 1
        return owner

    async def _create_or_read(self, kv: KeyValue, interview_id: str) -> Owner | None:
        for _ in range(3):  # the key may age out or be released between the create and the read
            try:
                revision = await kv.create(interview_id, self.me.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                try:
                    entry = await kv.get(interview_id)
                except nats.js.errors.KeyNotFoundError:
                    continue
                owner = Owner.decode(entry.value)
                # the same address is this node restarted; two nodes without an address are told apart by id only
                if owner.node_id != self.me.node_id and (not owner.url or owner.url != self.me.url):
                    return owner
                # ours: written by this node before a restart (same NODE_ID or address), or by a concurrent claim
                try:
                    revision = await kv.update(interview_id, self.me.encode(), last=entry.revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # deleted or taken meanwhile: try again
            self._held[interview_id] = _Held(revision, self._clock())
            log.info("placement: interview %s is held by this node (%s)", interview_id, self.me.node_id)
            return None
        raise BusUnavailable(f"placement of {interview_id} kept changing")

    async def held_elsewhere(self, interview_id: str) -> bool:
        """Whether another live node holds the room (its key is there and not this node's). BusUnavailable while NATS
        does not answer."""
        try:
            kv = await self._bucket()
            try:
                entry = await kv.get(interview_id)
            except nats.js.errors.KeyNotFoundError:
                return False
        except _TRANSIENT as exc:
            raise BusUnavailable(f"placement of {interview_id}: {type(exc).__name__}: {exc}") from exc
        owner = Owner.decode(entry.value)
        return owner.node_id != self.me.node_id and (not owner.url or owner.url != self.me.url)

    def room_closed(self, interview_id: str) -> None:
        """The room closed here (its last participant left): its key goes, so the next participant's POST may
        land on any node. Kept while draining (`release_all` deletes them once the finals are stored)."""
        held = self._held.get(interview_id)
        if held is None or self._draining:
            return
        held.closing = True
        task = asyncio.ensure_future(self._release(interview_id, held))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, interview_id: str, held: _Held) -> None:
        if self._draining or self._held.get(interview_id) is not held or not held.closing:
            return  # claimed again meanwhile, or the shutdown releases it
        del self._held[interview_id]
        if held.revision:
            await self._delete(interview_id, held.revision)

    async def _delete(self, interview_id: str, revision: int) -> None:
        try:
            kv = await self._bucket()
            await kv.delete(interview_id, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # another node holds it now: not ours to delete
        except _TRANSIENT as exc:  # it ages out after the TTL
            self._failed(exc)

    def drain(self) -> None:
        """Shutdown begins: closing rooms keep their keys (their finals are not stored yet)."""
        self._draining = True

    async def release_all(self) -> None:
        """Shutdown, after the streams drained and their finals were stored: stop the heartbeat, delete every key."""
        self._draining = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.gather(*self._releases, return_exceptions=True)
        held, self._held = self._held, {}
        await asyncio.gather(*(self._delete(iid, h.revision) for iid, h in held.items() if h.revision))
        if held:
            log.info("placement: released %d room(s)", len(held))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.refresh()
            except Exception:  # the next beat tries again; a key lost meanwhile is handled there
                log.exception("placement heartbeat failed")

    async def refresh(self) -> None:
        """Rewrite every key whose room is open here (or claimed less than a TTL ago); release the others."""
        now = self._clock()
        for interview_id, held in list(self._held.items()):
            if held.closing:
                continue
            if not self.live(interview_id) and now - held.claimed_at > self.ttl_s and not self._draining:
                held.closing = True
                await self._release(interview_id, held)
                continue
            try:
                kv = await self._bucket()
                try:
                    if not held.revision:
                        raise nats.js.errors.KeyWrongLastSequenceError()
                    held.revision = await kv.update(interview_id, self.me.encode(), last=held.revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    # aged out (a beat came late), never written (NATS was down), or taken by another node
                    if self._held.get(interview_id) is held:
                        del self._held[interview_id]
                    if await self._create_or_read(kv, interview_id) is not None:
                        await self._lost(interview_id)
            except _TRANSIENT as exc:
                self._held.setdefault(interview_id, held)  # kept: written when NATS answers again
                self._failed(exc)
            else:
                self._failing = False

    async def _lost(self, interview_id: str) -> None:
        log.warning("placement: interview %s is held by another node now (this node's key aged out); ending "
                    "its sessions here so participants re-join there", interview_id)
        if self.on_lost is not None:
            await self.on_lost(interview_id)

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning("room placement unavailable (%s: %s); rooms are placed on this node until NATS is back",
                        type(exc).__name__, exc)
