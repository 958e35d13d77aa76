"""Joining an interview room: WHIP (RFC 9725) ingest on aiortc, with the join tokens that
`POST /api/interviews/{id}/tokens` issues (adapters.http_api).

HTTP surface (errors as everywhere: adapters.http_edge)::

    POST   /whip/{interviewId}           Bearer join token, application/sdp offer -> 201 answer + Location
    DELETE /whip/{interviewId}/{session} leave (the token of the participant who holds the session)
    PATCH  /whip/{interviewId}/{session} 405: aiortc cannot restart ICE; re-POST with the same token instead
    OPTIONS /whip/{interviewId}          204 with Accept-Post

Signalling is non-trickle: the offer carries all its candidates, and aiortc gathers ours inside
`setLocalDescription`, so the answer is complete. A re-POST with a token whose participant is still in the
room (connected, or within the resume grace period) replaces that participant's session and keeps its
pipeline stream: numbering continues, nothing is transcribed twice.

Per session: every audio track is read by one task with a timeout. A stall (no frame for
`track_timeout_s`) pushes that much silence, so speech in progress ends as a final segment instead of
waiting for audio that may never come; after `dead_track_s` without frames the track is declared dead,
reported, and no longer read. `MediaStreamError` (the peer closed) ends the reader. A connection that
fails or closes detaches the participant (see `adapters.rooms`). Video is accepted in the offer but set
inactive (the pages never offer it: video goes peer to peer, `adapters.call`). Data channels are `analysis`
(interviewers and observers; a candidate never receives analysis, whatever its offer contains) and `call`
(the candidate and interviewers: signalling between participants, `adapters.call`); any other, or one a role may
not have, is closed at once. Audio sections the peer offers receive-only are the call's relay slots: answered
send-only with an idle `RelayTrack` each (at most `RELAY_SLOTS`), the rest inactive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import re
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from adapters.call import RELAY_SLOTS, ROLES_IN_CALL, CallHub, CallMember, RelayTrack
from adapters.http_edge import Audit, HttpError, as_http_error, error_kind, error_response, read_body
from adapters.metrics import Metrics
from adapters.placement import Placement
from adapters.rate_limits import RateLimits
from adapters.rooms import Participant, RoomRegistry
from adapters.rtp_audio import decode_inline
from adapters.tokens import InvalidToken, JoinClaims, TokenSigner, bearer_token
from domain.access import ANONYMOUS, Action, Decision, Principal, Resource, authorize
from domain.events import ErrorEvent

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024
ROLES_NEEDING_AUDIO = ("candidate", "interviewer")
CLOSED_STATUSES = ("completed", "cancelled")
_SUPPORTED_RATES = (8000, 16000, 24000, 32000, 44100, 48000)

# Returns the interview's status, or None when there is no such interview.
InterviewStatus = Callable[[str], Awaitable[str | None]]


# RFC 8839 section 5.1: candidate-attribute grammar (foundation is 1-32 ice-chars, component-id 1-256, priority
# 1*10DIGIT; ports are 16-bit), plus the mDNS host names of draft-ietf-mmusic-mdns-ice-candidates (aioice's pattern).
_FOUNDATION = re.compile(r"[A-Za-z0-9+/]{1,32}")
_DIGITS = re.compile(r"[0-9]{1,10}")
_MDNS_NAME = re.compile(r"[A-Za-z0-9-]{1,63}\.local")
_EXTENSION_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
_TCP_TYPES = ("active", "passive", "so")


def _number(value: str, what: str, low: int, high: int) -> int:
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        raise ValueError(f"{what} {value[:40]!r} is not a number from {low} to {high}")
    return int(value)


def _address(value: str, what: str) -> None:
    if _MDNS_NAME.fullmatch(value):
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what} {value[:60]!r} is neither an IP address nor an mDNS .local name") from None


def check_candidate(value: str) -> None:
    """Validates one `a=candidate:` value (RFC 8839); raises ValueError naming what is wrong. aiortc and aioice
    trust these fields: a port above 65535 or a host name that is no address fails later, inside aioice's tasks."""
    bits = value.split()
    if len(bits) < 8:
        raise ValueError("expected <foundation> <component> <transport> <priority> <address> <port> typ <type>")
    foundation, component, transport, priority, address, port, typ, kind, *extensions = bits
    if not _FOUNDATION.fullmatch(foundation):
        raise ValueError(f"foundation {foundation[:40]!r} is not 1-32 letters, digits, + or /")
    _number(component, "component", 1, 256)
    if transport.lower() not in ("udp", "tcp"):
        raise ValueError(f"transport {transport[:40]!r} is neither udp nor tcp")
    _number(priority, "priority", 0, 2**32 - 1)
    _address(address, "address")
    _number(port, "port", 0, 65535)
    if typ != "typ" or kind not in _CANDIDATE_TYPES:
        raise ValueError(f"expected typ host|srflx|prflx|relay, got {typ[:20]!r} {kind[:20]!r}")
    if len(extensions) % 2:
        raise ValueError(f"extension {extensions[-1][:40]!r} has no value")
    for name, ext in zip(extensions[::2], extensions[1::2], strict=True):
        if name == "raddr":
            _address(ext, "raddr")
        elif name == "rport":
            _number(ext, "rport", 0, 65535)
        elif name == "tcptype":
            if ext not in _TCP_TYPES:
                raise ValueError(f"tcptype {ext[:20]!r} is not active, passive or so")
        elif name == "generation":
            _number(ext, "generation", 0, 2**32 - 1)
        elif not _EXTENSION_NAME.fullmatch(name):
            raise ValueError(f"extension name {name[:40]!r} is not a token")


def _check_mids(sdp: str) -> None:
    """Each media section has one `a=mid`, all different, and a BUNDLE group names only those. aiortc trusts this:
    an offer that breaks it gets half-built transports whose `close()` then fails (found by tests/test_fuzz.py)."""
    sections: list[list[str]] = []
    bundles: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        elif line.startswith("a=mid:") and sections:
            sections[-1].append(line[6:].strip())
        elif line.startswith("a=group:BUNDLE"):
            bundles.append(line.split()[1:])
    mids = [m for section in sections for m in section]
    for k, section in enumerate(sections, 1):
        if len(section) != 1:
            raise HttpError(400, "malformed_sdp", f"media section {k} has {len(section)} a=mid lines (one needed)")
    if len(set(mids)) != len(mids):
        raise HttpError(400, "malformed_sdp", "two media sections have the same a=mid")
    for group in bundles:
        if unknown := [m for m in group if m not in mids]:
            raise HttpError(400, "malformed_sdp", f"the BUNDLE group names no media section {unknown[0][:20]!r}")


async def close_peer(pc: RTCPeerConnection) -> None:
    """`pc.close()`, and if aiortc fails halfway (it stops SCTP before the ICE transports), the ICE transports
    still stop, so no socket is left open."""
    try:
        await pc.close()
    except Exception as exc:
        log.info("closing a peer connection failed halfway (%s: %s); stopping its ICE transports",
                 type(exc).__name__, exc)
        transports = [t.receiver.transport for t in pc.getTransceivers()]
        if pc.sctp is not None:
            transports.append(pc.sctp.transport)
        for dtls in transports:
            with contextlib.suppress(Exception):
                await dtls.stop()
            with contextlib.suppress(Exception):
                await dtls.transport.stop()


def check_offer(sdp: str, role: str) -> SessionDescription:
    """Validates a WHIP offer before aiortc sees it; raises HttpError 400 with the reason."""
    if not sdp.startswith("v=0"):
        raise HttpError(400, "malformed_sdp", "the body is not an SDP offer (must start with v=0)")
    if "\x00" in sdp:
        raise HttpError(400, "malformed_sdp", "SDP contains NUL bytes")
    for number, line in enumerate(sdp.splitlines(), 1):  # the lines as aiortc's parser splits them
        if line.startswith("a=candidate") and line[2:].split(":", 1)[0] == "candidate":
            try:
                check_candidate(line.partition(":")[2])
            except ValueError as exc:
                raise HttpError(400, "malformed_sdp", f"bad ICE candidate on line {number}: {exc}") from None
    _check_mids(sdp)
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser fails with assorted exception types (assert, KeyError, ...)
        raise HttpError(400, "malformed_sdp", f"SDP could not be parsed ({type(exc).__name__})") from exc
    kinds = [m.kind for m in parsed.media]
    if not kinds:
        raise HttpError(400, "malformed_sdp", "the offer has no media section")
    for media in parsed.media:
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise HttpError(400, "malformed_sdp", f"{media.kind} section lacks ice-ufrag/ice-pwd")
        if media.dtls is None or not media.dtls.fingerprints:
            raise HttpError(400, "malformed_sdp", f"{media.kind} section lacks a DTLS fingerprint")
    if role in ROLES_NEEDING_AUDIO and "audio" not in kinds:
        raise HttpError(400, "no_audio", f"an offer from the {role} must include an audio track")
    if "audio" not in kinds and "application" not in kinds:
        raise HttpError(400, "nothing_offered", "the offer has neither audio nor a data channel")
    return parsed


def frame_to_pcm(frame: av.AudioFrame, converter: list[av.AudioResampler | None],
                 target: tuple[int, int] | None = None) -> tuple[np.ndarray, int, int]:
    """Interleaved int16 samples, rate and channel count of a decoded frame.

    Opus arrives as 48 kHz mono s16 (decoded inline, `adapters.rtp_audio`; stereo if aiortc decoded it) and
    G.711 as 8 kHz mono s16; those pass through as they are.
    Anything else, or anything that differs from `target` (the participant's stream format, fixed at its
    first frame: a resumed session may use another codec), is converted once here by `converter[0]`.
    """
    rate = frame.sample_rate
    channels = frame.layout.nb_channels
    name = frame.format.name
    native_ok = rate in _SUPPORTED_RATES and channels in (1, 2) and name in ("s16", "s16p")
    if native_ok and (target is None or target == (rate, channels)):
        data = frame.to_ndarray()
        pcm = data.reshape(-1) if name == "s16" else np.ascontiguousarray(data.T).reshape(-1)
        return pcm, rate, channels
    out_rate, out_channels = target or (48000, 2)
    resampler = converter[0]
    if resampler is None or (resampler.rate, resampler.layout.nb_channels) != (out_rate, out_channels):
        resampler = converter[0] = av.AudioResampler(format="s16", layout="stereo" if out_channels == 2 else "mono",
                                                     rate=out_rate)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    pcm = np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
    return pcm, out_rate, out_channels


@dataclass(slots=True, eq=False, weakref_slot=True)
class WhipSession:
    id: str
    claims: JoinClaims
    pc: RTCPeerConnection
    participant: Participant | None = None
    audio_tracks: list[MediaStreamTrack] = field(default_factory=list)
    relay_tracks: list[RelayTrack] = field(default_factory=list)
    call_member: CallMember | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    closed: bool = False
    decode_errors: int = 0
    address: str = ""  # of the joining request: the audit trail's leave entry when the connection is lost
    user_agent: str = ""

    @property
    def location(self) -> str:
        return f"/whip/{quote(self.claims.interview_id, safe='')}/{self.id}"

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(_log_task_failure)


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("WHIP task %s failed", task.get_name(), exc_info=task.exception())


class WhipIngest:
    """The WHIP endpoints and the live peer connections behind them."""

    def __init__(
        self,
        registry: RoomRegistry,
        signer: TokenSigner,
        interview_status: InterviewStatus,
        metrics: Metrics,
        *,
        ice_servers: list[RTCIceServer] | None = None,
        max_sdp_bytes: int = MAX_SDP_BYTES,
        track_timeout_s: float = 1.0,
        dead_track_s: float = 10.0,
        connect_timeout_s: float = 30.0,
        audit: Audit | None = None,
        limits: RateLimits | None = None,
        max_peer_connections: int = 200,
        max_rooms_per_org: int = 50,
        call: CallHub | None = None,
        placement: Placement | None = None,
        public_url: str | None = None,
    ) -> None:
        self.call = call
        # rooms placed across nodes: a POST for a room another node holds is redirected there (307)
        self.placement = placement
        self.public_url = (public_url or "").rstrip("/")  # set: session Locations are absolute URLs of this node
        self.registry = registry
        self.signer = signer
        self.interview_status = interview_status
        self.metrics = metrics
        self.ice_servers = list(ice_servers or [])
        self.max_sdp_bytes = max_sdp_bytes
        self.track_timeout_s = track_timeout_s
        self.dead_track_s = dead_track_s
        self.connect_timeout_s = connect_timeout_s
        self.sessions: dict[str, WhipSession] = {}
        self._closing = False
        self.audit = audit or Audit()
        self.limits = limits
        self.max_peer_connections = max_peer_connections
        self.max_rooms_per_org = max_rooms_per_org
        signer.revocations.listeners.append(self.on_revoked)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/whip/{interview_id}", self.post, methods=["POST"]),
            Route("/whip/{interview_id}", self.options, methods=["OPTIONS"]),
            Route("/whip/{interview_id}/{session_id}", self.delete, methods=["DELETE"]),
            Route("/whip/{interview_id}/{session_id}", self.patch, methods=["PATCH"]),
            Route("/whip/{interview_id}/{session_id}", self.options_session, methods=["OPTIONS"]),
        ]

    # ---- HTTP handlers -------------------------------------------------------------------------------
    async def options(self, request: Request) -> Response:
        return Response(status_code=204, headers={"Accept-Post": "application/sdp", "Allow": "POST, OPTIONS"})

    async def options_session(self, request: Request) -> Response:
        return Response(status_code=204, headers={"Allow": "DELETE, PATCH, OPTIONS"})

    async def patch(self, request: Request) -> Response:
        # RFC 9725 section 4.3: a session supporting neither trickle ICE nor ICE restarts answers PATCH
        # with 405. aiortc cannot restart ICE on a live connection; resuming is a re-POST (same token).
        return self._refuse(request, HttpError(
            405, "ice_restart_unsupported", "this server supports neither trickle ICE nor ICE restart; to resume, "
            "POST a new offer to the WHIP endpoint with the same token", {"Allow": "DELETE, OPTIONS"}))

    async def post(self, request: Request) -> Response:
        started = time.perf_counter()
        request.state.principal = ANONYMOUS
        try:
            response = await self._post(request)
        except Exception as exc:  # noqa: BLE001 - a store outage (503) or a bug (500) is a refused join too
            err = as_http_error(exc)
            self._audit(request, "whip_join", "denied" if err.status in (401, 403) else "failed")
            return self._refuse(request, exc)
        if response.status_code == 307:  # another node holds the room: the join happens there
            return response
        self._audit(request, "whip_join", "ok")
        self.metrics.join_seconds.observe(time.perf_counter() - started)
        return response

    def _audit(self, request: Request, action: str, outcome: str) -> None:
        self.audit.request(request, request.state.principal, action, "interview",
                           request.path_params.get("interview_id", ""), outcome)

    def _authorize(self, request: Request, claims: JoinClaims, action: Action) -> None:
        """The policy, as for every route: a join token acts only on its own interview's room."""
        principal = request.state.principal = Principal.participant(
            claims.participant_id, claims.org_id, claims.role, claims.interview_id, claims.token_id)
        decision = authorize(principal, action, Resource(interview_id=request.path_params["interview_id"]))
        if decision is not Decision.ALLOW:
            raise HttpError(403, "wrong_interview", "the token is for another interview")

    async def on_revoked(self, interview_id: str, token_id: str | None) -> None:
        """A join token (or every token of an interview) was revoked: its live sessions end now."""
        for session in list(self.sessions.values()):
            c = session.claims
            if c.interview_id == interview_id and token_id in (None, c.token_id):
                log.info("WHIP session %s: its join token was revoked; closing it", session.id)
                participant = session.participant
                await self._close_session(session)
                if participant is not None:
                    await self.registry.leave(participant, session.id)

    async def delete(self, request: Request) -> Response:
        request.state.principal = ANONYMOUS
        try:
            claims = self._claims(request, allow_expired=True)
            self._authorize(request, claims, Action.WHIP_LEAVE)
            session = self.sessions.get(request.path_params["session_id"])
            if session is None or session.claims.interview_id != request.path_params["interview_id"]:
                raise HttpError(404, "unknown_session", "no such WHIP session")
            if session.claims.participant_id != claims.participant_id:
                raise HttpError(403, "not_your_session", "this session belongs to another participant")
        except HttpError as err:
            self._audit(request, "whip_leave", "denied" if err.status in (401, 403) else "failed")
            return self._refuse(request, err)
        participant = session.participant
        await self._close_session(session)
        if participant is not None:
            await self.registry.leave(participant, session.id)
        self._audit(request, "whip_leave", "ok")
        log.info("WHIP session %s deleted by %s", session.id, claims.participant_id)
        return Response(status_code=200)

    def _refuse(self, request: Request, exc: Exception) -> Response:
        self.metrics.error(error_kind(as_http_error(exc).status))
        return error_response(request, exc, log)

    def _claims(self, request: Request, *, allow_expired: bool = False) -> JoinClaims:
        try:
            token = bearer_token(request.headers.get("authorization"))
            return self.signer.verify(token, allow_expired=allow_expired)
        except InvalidToken as exc:
            raise HttpError(401, "invalid_token", exc.reason,
                            {"WWW-Authenticate": 'Bearer realm="whip", error="invalid_token"'}) from exc

    async def _post(self, request: Request) -> Response:
        if self._closing:
            raise HttpError(503, "shutting_down", "the service is shutting down")
        interview_id = request.path_params["interview_id"]
        claims = self._claims(request)
        self._authorize(request, claims, Action.WHIP_JOIN)
        # before the placement: a token may not buy unlimited key-value round trips (a redirected join counts on
        # both nodes, so a redirect costs one of WHIP_JOIN_LIMIT)
        if self.limits is not None and (retry := await self.limits.hit("whip_join", claims.token_id)) is not None:
            raise HttpError(429, "too_many_requests", "too many joins with this token; retry later",
                            {"Retry-After": str(int(retry))})
        if self.placement is not None and (owner := await self.placement.claim(interview_id)) is not None:
            if not owner.url:
                raise HttpError(503, "room_elsewhere", "another node holds this interview's room and has no "
                                "public URL; retry later", {"Retry-After": "5"})
            log.info("WHIP POST for interview %s: its room is on node %s; redirecting", interview_id, owner.node_id)
            # RFC 9725 section 4.5: the client repeats the POST (same offer and token) at the owner's endpoint
            return Response(status_code=307, headers={"Location": owner.whip_url(interview_id)})
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/sdp":
            raise HttpError(415, "unsupported_media_type", "the offer must be sent as application/sdp")
        body = await read_body(request, self.max_sdp_bytes)
        status = await self.interview_status(interview_id)
        if status is None:
            raise HttpError(404, "unknown_interview", f"no interview {interview_id}")
        if status in CLOSED_STATUSES:
            raise HttpError(409, "interview_closed", f"the interview is {status}")
        try:
            sdp = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HttpError(400, "malformed_sdp", "the offer is not UTF-8 text") from exc
        offer = check_offer(sdp, claims.role)
        self._check_capacity(claims)

        session = WhipSession(id=secrets.token_urlsafe(12), claims=claims,
                              pc=RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers)),
                              address=request.client.host if request.client else "",
                              user_agent=request.headers.get("user-agent", "")[:256])
        try:
            answer = await self._negotiate(session, sdp, offer)
            self._check_alive(session)
            participant, replaced = await self.registry.join(claims, session.id)
        except BaseException:
            session.closed = True
            await close_peer(session.pc)
            raise
        session.participant = participant
        if session.closed:
            # The connection failed while the participant was being added (`_on_state` closed the session before
            # it had a participant): undo the join, so nobody stays "present" on a connection that is gone.
            if replaced is not None and replaced in self.sessions:
                self.registry.restore(participant, session.id, replaced)
            else:
                await self.registry.leave(participant, session.id)
            self._check_alive(session)
        self.sessions[session.id] = session
        self.metrics.joins.labels(role=claims.role).inc()
        for track in session.audio_tracks:
            session.spawn(self._read_audio(session, track), f"audio-{session.id}")
        session.spawn(self._watch_connect(session), f"connect-{session.id}")
        if replaced is not None and replaced in self.sessions:
            await self._close_session(self.sessions[replaced])
        log.info("WHIP session %s: %s %s (%s) in interview %s", session.id,
                 "resumed" if replaced else "joined", claims.participant_id, claims.role, interview_id)
        return Response(answer, status_code=201, media_type="application/sdp",
                        headers={"Location": self.public_url + session.location, "ETag": f'"{session.id}"'})

    def _check_capacity(self, claims: JoinClaims) -> None:
        """503 when this process holds `max_peer_connections`, or the organisation `max_rooms_per_org` live rooms
        and this would open another. A resume replaces its session, so it always fits."""
        if self.registry.get(claims.interview_id, claims.participant_id) is not None:
            return
        retry = {"Retry-After": "30"}
        if len(self.sessions) >= self.max_peer_connections:
            raise HttpError(503, "at_capacity", "this server holds as many connections as it can; retry later",
                            retry)
        rooms = {s.claims.interview_id for s in self.sessions.values() if s.claims.org_id == claims.org_id}
        if claims.interview_id not in rooms and len(rooms) >= self.max_rooms_per_org:
            raise HttpError(503, "too_many_rooms", f"the organisation already has {len(rooms)} live rooms, its "
                            "limit; end one or retry later", retry)

    @staticmethod
    def _check_alive(session: WhipSession) -> None:
        if session.closed:
            raise HttpError(400, "connection_failed", "the peer connection failed while joining: none of the "
                            "offer's ICE candidates could be reached (this server connects over UDP only)")

    # ---- negotiation ---------------------------------------------------------------------------------
    async def _negotiate(self, session: WhipSession, offer: str, parsed: SessionDescription) -> str:
        pc = session.pc
        offered = {m.rtp.muxId: m.direction for m in parsed.media if m.kind in ("audio", "video")}
        for m in parsed.media:
            if m.kind in ("audio", "video") and m.direction in ("sendrecv", "sendonly"):
                self.metrics.tracks_received.labels(kind=m.kind).inc()

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                session.audio_tracks.append(track)

        @pc.on("datachannel")
        def _on_channel(channel: Any) -> None:
            self._on_datachannel(session, channel)

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            state = pc.connectionState
            log.debug("WHIP session %s connection %s", session.id, state)
            if state in ("failed", "closed") and not session.closed:
                if state == "failed":
                    self.metrics.error("webrtc")
                    log.info("WHIP session %s: connection failed", session.id)
                await self._drop_session(session)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except Exception as exc:
            raise HttpError(400, "unacceptable_offer", f"the offer cannot be accepted: {exc}") from exc
        relays = self.call is not None and session.claims.role in ROLES_IN_CALL
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "audio":
                # Declined, so nobody decodes frames we would drop; the pages send video only peer to peer.
                transceiver.direction = "inactive"
            elif offered.get(str(transceiver.mid)) == "recvonly":
                if relays and len(session.relay_tracks) < RELAY_SLOTS:
                    track = RelayTrack(str(transceiver.mid))
                    session.relay_tracks.append(track)
                    transceiver.sender.replaceTrack(track)
                    transceiver.direction = "sendonly"
                else:
                    transceiver.direction = "inactive"
            else:
                transceiver.direction = "recvonly"
                ref = weakref.ref(session)  # aiortc's receiver must not keep a closed session alive
                decode_inline(transceiver.receiver, functools.partial(self._decode_error, ref),
                              functools.partial(self._forward_to, ref), self._packets_dropped)
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            raise HttpError(400, "unacceptable_offer", f"no answer could be made to the offer: {exc}") from exc
        if session.claims.role in ROLES_NEEDING_AUDIO and not any(
            t.kind == "audio" and t.currentDirection == "recvonly" for t in pc.getTransceivers()
        ):
            raise HttpError(400, "no_audio", "no audio track could be negotiated (Opus, PCMU or PCMA needed)")
        return pc.localDescription.sdp

    def _forward(self, session: WhipSession, payload: bytes, rtp_timestamp: int) -> None:
        """The participant's Opus payload, as received, to every relay slot that plays it."""
        member = session.call_member
        if member is not None:
            for tap in list(member.taps.values()):
                tap(payload, rtp_timestamp)

    def _on_datachannel(self, session: WhipSession, channel: Any) -> None:
        participant = session.participant
        role = session.claims.role
        if channel.label == "call" and participant is not None and not session.closed:
            self._on_call_channel(session, channel)
            return
        if channel.label != "analysis" or participant is None or role == "candidate" or session.closed:
            # Refused on the server whatever the offer says: a candidate never receives analysis.
            log.info("WHIP session %s: closing data channel %r of a %s", session.id, channel.label, role)
            channel.close()
            return
        try:
            self.registry.add_viewer(participant, channel)
        except PermissionError:
            channel.close()
            return

        # Weakly: the channel lives in aiortc's reference cycles until a full collection, and must not keep the
        # participant (its room, its stream) alive that long after everyone left.
        participant_ref = weakref.ref(participant)

        @channel.on("close")
        def _on_close() -> None:
            if (p := participant_ref()) is not None:
                self.registry.remove_viewer(p, channel)

    def _on_call_channel(self, session: WhipSession, channel: Any) -> None:
        claims = session.claims
        hub = self.call
        if hub is None or claims.role not in ROLES_IN_CALL:
            # Observers take no part in the call: they neither send nor receive anything peer to peer.
            log.info("WHIP session %s: closing the call channel of a %s", session.id, claims.role)
            channel.close()
            return
        member = CallMember(claims.interview_id, claims.participant_id, claims.role, claims.name, channel,
                            slots=session.relay_tracks)
        session.call_member = member
        hub.attach(member)

        @channel.on("message")
        def _on_message(message: str | bytes) -> None:
            hub.on_message(member, message)

        @channel.on("close")
        def _on_close() -> None:
            hub.detach(member)

    async def _watch_connect(self, session: WhipSession) -> None:
        """A session whose peer never completes ICE/DTLS is dropped after `connect_timeout_s`."""
        deadline = asyncio.get_running_loop().time() + self.connect_timeout_s
        while session.pc.connectionState != "connected" and not session.closed:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                log.info("WHIP session %s never connected; dropping it", session.id)
                self.metrics.error("webrtc")
                await self._drop_session(session)
                return
            changed = asyncio.Event()
            session.pc.once("connectionstatechange", changed.set)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()

    # ---- audio ---------------------------------------------------------------------------------------
    async def _read_audio(self, session: WhipSession, track: MediaStreamTrack) -> None:
        participant = session.participant
        assert participant is not None
        converter: list[av.AudioResampler | None] = [None]
        loop = asyncio.get_running_loop()
        last_frame = loop.time()
        silence_s = 0.0
        dead = failing = False
        while not session.closed and not self._closing:
            try:
                if dead:  # reported once; now sleep until the peer sends again (or the track ends)
                    frame = await track.recv()
                    dead = False
                    log.info("WHIP session %s: audio resumed", session.id)
                else:
                    # not asyncio.wait_for: on Python 3.11 it can swallow a cancel that lands as the frame arrives
                    # (50 times a second), and shutdown (`aclose`) would wait on this loop while the peer sends
                    async with asyncio.timeout(self.track_timeout_s):
                        frame = await track.recv()
            except TimeoutError:
                stalled = loop.time() - last_frame
                if stalled >= self.dead_track_s:
                    self._track_dead(participant, session, stalled)
                    dead = True
                    continue
                # No audio: feed silence (up to 2 s per stall, enough to end speech in progress) so the last
                # words become a final segment now rather than when, or if, audio comes back.
                if (silence_s < 2.0 and participant.in_rate and participant.session_id == session.id
                        and participant.consented):
                    n = int(participant.in_rate * self.track_timeout_s) * participant.channels
                    silence_s += self.track_timeout_s
                    # A failing pipeline is reported on the frame path below; silence adds nothing to say.
                    with contextlib.suppress(Exception):
                        participant.push_audio(np.zeros(n, dtype=np.int16), participant.in_rate,
                                               participant.channels)
                continue
            except MediaStreamError:
                log.debug("WHIP session %s: audio track ended", session.id)
                return
            last_frame = loop.time()
            silence_s = 0.0
            self.metrics.frames_in.inc()
            if not isinstance(frame, av.AudioFrame):
                self.metrics.frames_dropped.labels(reason="not_audio").inc()
                continue
            if participant.session_id != session.id:
                self.metrics.frames_dropped.labels(reason="stale_session").inc()
                continue
            if not participant.consented:  # not decoded further, not buffered: dropped and counted
                self.metrics.frames_dropped.labels(reason="no_consent").inc()
                continue
            try:
                target = (participant.in_rate, participant.channels) if participant.in_rate else None
                pcm, rate, channels = frame_to_pcm(frame, converter, target)
                if participant.push_audio(pcm, rate, channels):
                    self.metrics.audio_seconds.inc(frame.samples / frame.sample_rate)
                else:
                    self.metrics.frames_dropped.labels(reason="leaving").inc()
                failing = False
            except ValueError as exc:
                self.metrics.frames_dropped.labels(reason="bad_frame").inc()
                self.metrics.error("track")
                log.warning("WHIP session %s: dropping an audio frame: %s", session.id, exc)
            except Exception as exc:
                # The pipeline itself failed on this frame. Keep the session and keep trying with the next
                # frames (the failure may pass), but say so once per failure streak, not once per frame.
                self.metrics.frames_dropped.labels(reason="pipeline_error").inc()
                if not failing:
                    failing = True
                    self.metrics.error("stream")
                    log.exception("WHIP session %s: the audio pipeline failed; dropping frames until it works",
                                  session.id)
                    participant.room.publish(participant, ErrorEvent(
                        participant.speaker, "pipeline_failed",
                        f"audio of {participant.speaker.name} cannot be processed: {type(exc).__name__}", {}))

    def _forward_to(self, session_ref: weakref.ref[WhipSession], payload: bytes, timestamp: int) -> None:
        session = session_ref()
        if session is not None:
            self._forward(session, payload, timestamp)

    def _packets_dropped(self, reason: str, n: int) -> None:
        """Audio packets the jitter buffer gave up ("lost": silence took their place) or dropped ("late")."""
        self.metrics.frames_dropped.labels(reason=reason).inc(n)

    def _decode_error(self, session_ref: weakref.ref[WhipSession], exc: Exception) -> None:
        self.metrics.frames_dropped.labels(reason="decode_error").inc()
        session = session_ref()
        if session is None:
            return
        if not session.decode_errors:
            log.warning("WHIP session %s: dropping undecodable audio frames: %s", session.id, exc)
        session.decode_errors += 1

    def _track_dead(self, participant: Participant, session: WhipSession, stalled: float) -> None:
        self.metrics.error("track")
        log.warning("WHIP session %s: no audio for %.1f s; track considered dead", session.id, stalled)
        participant.room.publish(participant, ErrorEvent(
            participant.speaker, "track_dead",
            f"no audio received from {participant.speaker.name} for {stalled:.0f} s", {}))

    # ---- teardown ------------------------------------------------------------------------------------
    async def _close_session(self, session: WhipSession) -> None:
        """Stops reading and closes the peer connection; the participant is left to the caller."""
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.id, None)
        if self.call is not None and session.call_member is not None:
            self.call.detach(session.call_member)
        current = asyncio.current_task()
        for task in list(session.tasks):
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in session.tasks if t is not current), return_exceptions=True)
        await close_peer(session.pc)
        # aiortc's objects form reference cycles that only a full collection frees; nothing of ours that the pc
        # still reaches (tracks, the participant with its stream and room) should wait for that.
        session.audio_tracks.clear()
        session.participant = None

    async def _drop_session(self, session: WhipSession) -> None:
        """The connection is gone without a DELETE: close it and let the participant wait for a resume."""
        participant = session.participant
        self._audit_leave(session, "connection_lost")
        await self._close_session(session)
        if participant is not None:
            self.registry.detach(participant, session.id)

    async def move_room(self, interview_id: str) -> None:
        """Another node holds the interview's room now: its sessions here end, and their participants (kept for
        `resume_grace_s`, then drained) re-POST and are redirected there."""
        for session in [s for s in self.sessions.values() if s.claims.interview_id == interview_id]:
            await self._drop_session(session)

    async def end_interview(self, interview_id: str) -> int:
        """Close every session of the interview and remove its participants without processing anything more
        (its candidate's data is being erased). Returns how many participants were removed."""
        for session in [s for s in self.sessions.values() if s.claims.interview_id == interview_id]:
            await self._close_session(session)
        return await self.registry.end_interview(interview_id)

    async def aclose(self) -> None:
        """Shutdown, step 1: refuse new sessions and stop reading audio (peer connections stay up so the
        drained finals still reach interviewers). Step 2 is the registry's; step 3 `close_all()`."""
        self._closing = True
        current = asyncio.current_task()
        tasks = [t for s in self.sessions.values() for t in s.tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close_all(self) -> None:
        for session in self.sessions.values():
            self._audit_leave(session, "shutdown")
        await asyncio.gather(*(self._close_session(s) for s in list(self.sessions.values())),
                             return_exceptions=True)

    def _audit_leave(self, session: WhipSession, reason: str) -> None:
        """A leave without a DELETE (the connection was lost, the server shuts down), once per session."""
        if self.audit.sink is None or self.audit.entry_type is None or session.closed:
            return
        c = session.claims
        self.audit.sink.record(self.audit.entry_type(
            actor_type="participant", actor_id=c.participant_id, role=c.role, org_id=c.org_id,
            action="whip_leave", resource_type="interview", resource_id=c.interview_id, outcome="ok",
            address=session.address, user_agent=session.user_agent, at=datetime.now(UTC), detail={"reason": reason}))
