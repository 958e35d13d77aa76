"""The call between a room's participants: signalling over each page's `call` data channel, TURN credentials,
and the audio relay used when two participants find no peer-to-peer path.

Media between participants goes browser to browser; the server carries only signalling (and, as a last resort,
audio packets). Each page negotiates a `call` data channel in its WHIP offer (adapters.webrtc hands it here).
Contract of the channel, one JSON object per message::

    server -> page  {"type": "peers", "self", "epoch", "peers": [{participantId, role, name, epoch}],
                     "observers": n, "iceServers": [...], "full": bool}          on join and on every change
                    {"type": "offer"|"answer"|"candidate"|"bye", "from", "to", "sdp"|"candidate"}   relayed
                    {"type": "relay", "peer", "mid"}    the audio of `peer` now arrives on the server connection's
                                                        transceiver `mid` (null: no relay possible)
    page -> server  {"type": "offer"|"answer", "to", "sdp"} / {"type": "candidate", "to", "candidate"} /
                    {"type": "bye", "to"} / {"type": "relay", "to"} / {"type": "unrelay", "to"} /
                    {"type": "stats", "peers": [...]}

Who reaches whom: the candidate and up to `MAX_INTERVIEWERS` interviewers of one room form a full mesh; a
candidate reaches only interviewers. Observers get no `call` channel at all (adapters.webrtc closes it): they send
and receive nothing peer to peer, and are only counted in `observers` so the candidate knows who is watching.
Nothing crosses rooms: a message goes only to a peer the sender's own `peers` list names. `from` is always set
here, never taken from the page. Every message is validated and bounded (size, types, rate); a bad one is
dropped, counted (`call_messages_dropped_total{reason}`) and logged once per participant and reason.

Relay: a page whose peer connection to another participant does not connect asks for `relay`. Each page's WHIP
offer carries `RELAY_SLOTS` receive-only audio transceivers; the server answers them send-only with a
`RelayTrack` each, idle until assigned. Relaying A <-> B taps the Opus payloads the server receives from A's
microphone (adapters.rtp_audio, before decoding) and hands them, unchanged, to B's slot as `av.Packet`s, which
aiortc's `RTCRtpSender` packs without re-encoding; the same the other way. Video is not relayed. A relayed pair
keeps retrying the direct path (mesh.js). The two directions end independently, each when its receiver says so: B's
`unrelay` to A means B now receives A directly, so only A -> B stops and B's slot goes idle; B -> A goes on until
A's own `unrelay` (A's direct attempt may fail or connect later, and its audio must not gap meanwhile). A page that
asks for `relay` again gets back whatever direction had ended. A participant leaving ends every relay from or to it.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from adapters.metrics import Metrics
from adapters.rooms import Channel

log = logging.getLogger(__name__)

MAX_INTERVIEWERS = 4
RELAY_SLOTS = 4  # the most peers one member has: the candidate's four interviewers
MAX_MESSAGE_BYTES = 64 * 1024  # an offer with audio, video and every codec is ~10 KB
MAX_SDP_CHARS = 48 * 1024
MAX_CANDIDATE_CHARS = 1024
CHANNEL_BUFFER_LIMIT = 1024 * 1024
# Token bucket per member: a page's start-up (offers, answers, a dozen candidates per peer) fits in the burst.
RATE_PER_S = 20.0
BURST = 120
STATS_INTERVAL_S = 4.0  # quality reports accepted per member at most this often
RELAY_QUEUE = 25  # 0.5 s of 20 ms packets; older ones are dropped if the sender falls behind
OPUS_CLOCK = 48_000
SIGNAL_TYPES = ("offer", "answer", "candidate", "bye")
ROLES_IN_CALL = ("candidate", "interviewer")


# ---- TURN credentials ------------------------------------------------------------------------------------------
def turn_credentials(secret: bytes, user: str, expires_at: int) -> tuple[str, str]:
    """TURN REST API credentials (draft-uberti-behave-turn-rest-00; coturn `use-auth-secret`): the username is
    `<expiry unix time>:<user>`, the credential base64(HMAC-SHA1(secret, username))."""
    username = f"{int(expires_at)}:{user}"
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


@dataclass(slots=True, frozen=True)
class IceConfig:
    """The ICE servers pages get: STUN as configured, TURN with credentials minted per participant."""

    urls: tuple[str, ...] = ()
    turn_secret: bytes | None = None
    turn_ttl_s: int = 4 * 3600
    clock: Callable[[], float] = time.time

    def __repr__(self) -> str:
        return f"IceConfig(urls={self.urls!r}, turn_secret=<redacted>, turn_ttl_s={self.turn_ttl_s})"

    def for_participant(self, participant_id: str) -> list[dict[str, Any]]:
        stun = [u for u in self.urls if u.startswith("stun:")]
        turn = [u for u in self.urls if u.startswith("turn")]
        servers: list[dict[str, Any]] = [{"urls": stun}] if stun else []
        if turn and self.turn_secret:
            username, credential = turn_credentials(self.turn_secret, participant_id,
                                                    int(self.clock()) + self.turn_ttl_s)
            servers.append({"urls": turn, "username": username, "credential": credential})
        return servers


# ---- relay -----------------------------------------------------------------------------------------------------
class RelayTrack(MediaStreamTrack):
    """A send-only audio track of the server connection that plays another participant's Opus packets as they
    are, with their timing (RTP timestamps become pts on the 48 kHz clock). Idle (recv waits) until assigned."""

    kind = "audio"

    def __init__(self, mid: str) -> None:
        super().__init__()
        self.mid = mid
        self.source: str | None = None  # the participant whose audio this plays
        self.dropped = 0
        self._queue: deque[tuple[bytes, int]] = deque(maxlen=RELAY_QUEUE)
        self._ready: asyncio.Event | None = None  # created on the loop, by the first recv
        self._origin: int | None = None
        self._base = 0
        self._last_pts = -960

    def assign(self, source: str | None) -> None:
        """Play `source` from now on (None: idle). The pts run on from the last one sent, whoever plays next."""
        self.source = source
        self._queue.clear()
        self._origin = None
        self._base = self._last_pts + 960

    def push(self, payload: bytes, rtp_timestamp: int) -> None:
        if self.readyState != "live":
            return
        if self._origin is None:
            self._origin = rtp_timestamp
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((payload, self._base + ((rtp_timestamp - self._origin) & 0xFFFFFFFF)))
        if self._ready is not None:
            self._ready.set()

    async def recv(self) -> av.Packet:
        if self._ready is None:
            self._ready = asyncio.Event()
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        payload, pts = self._queue.popleft()
        self._last_pts = pts
        packet = av.Packet(payload)
        packet.pts = pts
        packet.time_base = fractions.Fraction(1, OPUS_CLOCK)
        return packet

    def stop(self) -> None:
        super().stop()
        if self._ready is not None:
            self._ready.set()


# ---- members ---------------------------------------------------------------------------------------------------
OpusTap = Callable[[bytes, int], None]


@dataclass(slots=True, eq=False)
class CallMember:
    """One participant's `call` channel, with what the server connection offers the relay: the send-only slots
    and the set of taps its microphone's Opus payloads go to."""

    interview_id: str
    participant_id: str
    role: str
    name: str
    channel: Channel
    slots: list[RelayTrack] = field(default_factory=list)
    taps: dict[str, OpusTap] = field(default_factory=dict)  # destination participant id -> tap
    epoch: str = field(default_factory=lambda: secrets.token_hex(4))
    in_mesh: bool = False
    tokens: float = BURST
    refilled_at: float = field(default_factory=time.monotonic)
    stats_at: float = -math.inf
    warned: set[str] = field(default_factory=set)

    def descriptor(self) -> dict[str, Any]:
        return {"participantId": self.participant_id, "role": self.role, "name": self.name, "epoch": self.epoch}


class Dropped(ValueError):
    """A message from a page that is not passed on; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _may_meet(a: CallMember, b: CallMember) -> bool:
    return a is not b and a.in_mesh and b.in_mesh and not (a.role == "candidate" and b.role == "candidate")


def _text(msg: dict[str, Any], key: str, limit: int) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Dropped("bad_field", f"{key} must be a non-empty string of at most {limit} characters")
    return value


def _number(entry: dict[str, Any], key: str, high: float) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise Dropped("bad_field", f"stats: {key} must be a number in [0, {high}]")
    return float(value)


def _clean_candidate(value: Any) -> dict[str, Any] | None:
    """An RTCIceCandidateInit with only its known fields (null: end of candidates)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Dropped("bad_field", "candidate must be an object or null")
    text = value.get("candidate")
    if not isinstance(text, str) or len(text) > MAX_CANDIDATE_CHARS:
        raise Dropped("bad_field", "candidate.candidate must be a string")
    mid = value.get("sdpMid")
    index = value.get("sdpMLineIndex")
    ufrag = value.get("usernameFragment")
    if mid is not None and (not isinstance(mid, str) or len(mid) > 32):
        raise Dropped("bad_field", "candidate.sdpMid must be a short string or null")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 64):
        raise Dropped("bad_field", "candidate.sdpMLineIndex must be a small integer or null")
    if ufrag is not None and (not isinstance(ufrag, str) or len(ufrag) > 256):
        raise Dropped("bad_field", "candidate.usernameFragment must be a string or null")
    return {"candidate": text, "sdpMid": mid, "sdpMLineIndex": index, "usernameFragment": ufrag}


class CallHub:
    """Every room's `call` members, the relays between them, and the quality reports they send."""

    def __init__(self, metrics: Metrics, ice: IceConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.ice = ice or IceConfig()
        self._clock = clock
        self.rooms: dict[str, dict[str, CallMember]] = {}  # interview id -> participant id -> member
        self._observers: dict[str, int] = {}
        self._relays: set[tuple[str, str, str]] = set()  # (interview, source, destination)

    # ---- membership --------------------------------------------------------------------------------------------
    def attach(self, member: CallMember) -> None:
        """A page's `call` channel opened (a resumed participant's replaces its previous one)."""
        if member.role not in ROLES_IN_CALL:
            raise PermissionError(f"a {member.role} takes no part in the call")
        room = self.rooms.setdefault(member.interview_id, {})
        previous = room.get(member.participant_id)
        if previous is not None:
            self._unrelay(previous)
        room[member.participant_id] = member
        self._admit(room)
        if previous is None:  # a replaced member is not counted twice (its own detach finds it gone)
            self.metrics.call_members.inc()
        log.info("call: %s (%s) on the call of interview %s%s", member.participant_id, member.role,
                 member.interview_id, "" if member.in_mesh else " (mesh full: not connected to peers)")
        self._announce(member.interview_id)

    def detach(self, member: CallMember) -> None:
        room = self.rooms.get(member.interview_id)
        if room is None or room.get(member.participant_id) is not member:
            return
        self._unrelay(member)
        del room[member.participant_id]
        self.metrics.call_members.dec()
        if not room:
            del self.rooms[member.interview_id]
            return
        self._admit(room)
        self._announce(member.interview_id)

    def room_changed(self, interview_id: str, observers: int) -> None:
        """The room's membership changed (adapters.rooms): the candidate is told how many observers watch."""
        if observers:
            self._observers[interview_id] = observers
        else:
            self._observers.pop(interview_id, None)
        self._announce(interview_id)

    def _admit(self, room: dict[str, CallMember]) -> None:
        """The first candidate and the first MAX_INTERVIEWERS interviewers (in order of arrival) form the mesh."""
        seats = {"candidate": 1, "interviewer": MAX_INTERVIEWERS}
        for m in room.values():
            m.in_mesh = seats.get(m.role, 0) > 0
            if m.in_mesh:
                seats[m.role] -= 1

    def peers_of(self, member: CallMember) -> list[CallMember]:
        room = self.rooms.get(member.interview_id, {})
        return [m for m in room.values() if _may_meet(member, m)]

    def _announce(self, interview_id: str) -> None:
        observers = self._observers.get(interview_id, 0)
        for m in list(self.rooms.get(interview_id, {}).values()):
            self._send(m, {"type": "peers", "self": m.participant_id, "epoch": m.epoch,
                           "peers": [p.descriptor() for p in self.peers_of(m)], "observers": observers,
                           "iceServers": self.ice.for_participant(m.participant_id), "full": not m.in_mesh})

    def _send(self, member: CallMember, msg: dict[str, Any]) -> bool:
        channel = member.channel
        if channel.readyState != "open" or channel.bufferedAmount > CHANNEL_BUFFER_LIMIT:
            self._drop(member, Dropped("undeliverable", f"the call channel of {member.participant_id} is "
                                       f"{channel.readyState} or backed up"))
            return False
        try:
            channel.send(json.dumps(msg, separators=(",", ":")))
        except Exception as exc:  # aiortc raises InvalidStateError when the transport went away
            self._drop(member, Dropped("undeliverable", f"sending failed: {exc}"))
            return False
        return True

    # ---- messages ----------------------------------------------------------------------------------------------
    def on_message(self, member: CallMember, data: str | bytes) -> None:
        try:
            self._handle(member, data)
        except Dropped as dropped:
            self._drop(member, dropped)

    def _drop(self, member: CallMember, dropped: Dropped) -> None:
        self.metrics.call_dropped.labels(reason=dropped.reason).inc()
        if dropped.reason not in member.warned:
            member.warned.add(dropped.reason)
            log.warning("call: dropping a message of %s in interview %s (%s: %s); further ones are only counted",
                        member.participant_id, member.interview_id, dropped.reason, dropped)

    def _handle(self, member: CallMember, data: str | bytes) -> None:
        room = self.rooms.get(member.interview_id, {})
        if room.get(member.participant_id) is not member:
            raise Dropped("stale", "a message on a replaced call channel")
        if not isinstance(data, str):
            raise Dropped("not_text", "binary message")
        if len(data) > MAX_MESSAGE_BYTES or len(data.encode()) > MAX_MESSAGE_BYTES:
            raise Dropped("too_large", f"message over {MAX_MESSAGE_BYTES} bytes")
        now = self._clock()
        member.tokens = min(BURST, member.tokens + (now - member.refilled_at) * RATE_PER_S)
        member.refilled_at = now
        if member.tokens < 1:
            raise Dropped("rate", f"more than {RATE_PER_S:g} messages/s")
        member.tokens -= 1
        try:
            msg = json.loads(data)
        except ValueError as exc:
            raise Dropped("not_json", "not JSON") from exc
        if not isinstance(msg, dict):
            raise Dropped("not_json", "not a JSON object")
        kind = msg.get("type")
        if kind == "stats":
            self._stats(member, msg, now)
            return
        if kind not in (*SIGNAL_TYPES, "relay", "unrelay"):
            raise Dropped("bad_type", f"unknown type {str(kind)[:40]!r}")
        to = _text(msg, "to", 200)
        target = room.get(to)
        if target is None or not _may_meet(member, target):
            raise Dropped("not_allowed", f"{to[:40]!r} is not a peer of {member.participant_id}")
        if kind == "relay":
            self._relay(member, target)
            return
        if kind == "unrelay":
            self._end_relay(target, member)
            return
        out: dict[str, Any] = {"type": kind, "from": member.participant_id, "to": to}
        if kind in ("offer", "answer"):
            sdp = _text(msg, "sdp", MAX_SDP_CHARS)
            if not sdp.startswith("v=0"):
                raise Dropped("bad_field", "sdp is not an SDP description")
            out["sdp"] = sdp
        elif kind == "candidate":
            out["candidate"] = _clean_candidate(msg.get("candidate"))
        if self._send(target, out):
            self.metrics.call_signals.labels(type=kind).inc()

    def _stats(self, member: CallMember, msg: dict[str, Any], now: float) -> None:
        if now - member.stats_at < STATS_INTERVAL_S:
            raise Dropped("rate", f"quality reports more often than every {STATS_INTERVAL_S:g} s")
        peers = msg.get("peers")
        if not isinstance(peers, list) or len(peers) > RELAY_SLOTS + 1:
            raise Dropped("bad_field", "stats: peers must be a list of at most 5 reports")
        samples: list[tuple[str, float | None, float | None, float | None]] = []
        for entry in peers:
            if not isinstance(entry, dict) or entry.get("path") not in ("p2p", "relay"):
                raise Dropped("bad_field", "stats: each report needs path p2p or relay")
            samples.append((entry["path"], _number(entry, "rttS", 60.0), _number(entry, "jitterS", 60.0),
                            _number(entry, "lossRatio", 1.0)))
        member.stats_at = now
        for path, rtt, jitter, loss in samples:
            if rtt is not None:
                self.metrics.call_rtt.labels(path=path).observe(rtt)
            if jitter is not None:
                self.metrics.call_jitter.labels(path=path).observe(jitter)
            if loss is not None:
                self.metrics.call_loss.labels(path=path).observe(loss)

    # ---- relay -------------------------------------------------------------------------------------------------
    def _relay(self, a: CallMember, b: CallMember) -> None:
        """Relay a's audio to b and b's to a through the server, if both connections have a free slot."""
        for src, dst in ((a, b), (b, a)):
            key = (a.interview_id, src.participant_id, dst.participant_id)
            slot = next((s for s in dst.slots if s.source == src.participant_id), None)
            if slot is None:
                slot = next((s for s in dst.slots if s.source is None), None)
                if slot is None:
                    log.warning("call: no relay slot left on %s's connection for %s", dst.participant_id,
                                src.participant_id)
                    self._send(dst, {"type": "relay", "peer": src.participant_id, "mid": None})
                    continue
                slot.assign(src.participant_id)
                src.taps[dst.participant_id] = slot.push
                self._relays.add(key)
                self.metrics.call_relayed.set(len(self._relays))
                log.info("call: relaying the audio of %s to %s in interview %s", src.participant_id,
                         dst.participant_id, a.interview_id)
            self._send(dst, {"type": "relay", "peer": src.participant_id, "mid": slot.mid})

    def _end_relay(self, src: CallMember, dst: CallMember) -> None:
        """`dst` receives `src` directly now: stop forwarding src's audio to dst. The other way goes on until src's
        own `unrelay`."""
        key = (src.interview_id, src.participant_id, dst.participant_id)
        if key not in self._relays:
            return
        src.taps.pop(dst.participant_id, None)
        for slot in dst.slots:
            if slot.source == src.participant_id:
                slot.assign(None)
        self._relays.discard(key)
        self.metrics.call_relayed.set(len(self._relays))
        log.info("call: %s receives %s directly; no longer relaying %s's audio to it in interview %s",
                 dst.participant_id, src.participant_id, src.participant_id, src.interview_id)

    def _unrelay(self, member: CallMember) -> None:
        """Ends every relay from or to `member` (its channel closed or was replaced)."""
        room = self.rooms.get(member.interview_id, {})
        for other in room.values():
            other.taps.pop(member.participant_id, None)
            for slot in other.slots:
                if slot.source == member.participant_id:
                    slot.assign(None)
        member.taps.clear()
        for slot in member.slots:
            slot.assign(None)
        self._relays = {k for k in self._relays if member.participant_id not in k[1:] or k[0] != member.interview_id}
        self.metrics.call_relayed.set(len(self._relays))
