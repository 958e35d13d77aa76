"""An aiortc participant in the call (adapters.call), as the pages' mesh.js is one: it answers the server's `peers`
on the `call` channel of its WHIP session with a direct peer connection to each peer, sending an audio track and
receiving theirs, or asks the server to relay when told to (the pages' `?p2p=off`) or when no direct path connects.

Used by `python -m benchmarks.latency --call` so the rooms' candidate and interviewer hold the call as the pages do,
with the server doing the signalling only. The messages are the pages' (the contract is in adapters/call.py): the
peer with the smaller participant id offers; offers and answers carry every ICE candidate (aiortc gathers them
before `setLocalDescription` returns), and trickled candidates from a page are added as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from testing.whip_client import WhipSession

log = logging.getLogger(__name__)

P2P_TIMEOUT_S = 10.0  # as mesh.js: a direct path not connected by then asks for the relay


@dataclass(slots=True)
class CallLink:
    """This participant's side of the call with one peer."""

    peer_id: str
    pc: RTCPeerConnection | None = None
    path: str = "connecting"  # connecting | p2p | relay | none
    relay_mid: str | None = None
    drains: list[asyncio.Task[None]] = field(default_factory=list)


class CallPeer:
    """Holds the call on `session`'s `call` channel until `close()`. `track_for(peer_id)` gives the audio track to
    send to that peer (a track feeds one sender, so each peer gets its own); `p2p=False` skips the direct path and
    asks for the relay at once."""

    def __init__(self, session: WhipSession, track_for: Callable[[str], MediaStreamTrack], *,
                 p2p: bool = True, p2p_timeout_s: float = P2P_TIMEOUT_S) -> None:
        if session.call_channel is None:
            raise ValueError("the WHIP session has no call channel (publish with call=True)")
        self.session = session
        self.track_for = track_for
        self.p2p = p2p
        self.p2p_timeout_s = p2p_timeout_s
        self.self_id = ""
        self.links: dict[str, CallLink] = {}
        self.connected = asyncio.Event()  # some link is on a path (p2p or relay)
        self._timers: set[asyncio.Task[None]] = set()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            msg = await self.session.call_messages.get()
            try:
                await self._handle(msg)
            except Exception as exc:  # noqa: BLE001 - one bad exchange must not end the call for the others
                log.warning("call peer %s: %s message failed: %s", self.self_id, msg.get("type"), exc)

    async def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "peers":
            await self._on_peers(msg)
            return
        link = self.links.get(str(msg.get("from") or msg.get("peer") or ""))
        if link is None:
            return
        if kind == "offer":
            await self._on_offer(link, msg["sdp"])
        elif kind == "answer" and link.pc is not None:
            await link.pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="answer"))
        elif kind == "candidate" and link.pc is not None and msg.get("candidate"):
            c = msg["candidate"]
            candidate = candidate_from_sdp(c["candidate"].removeprefix("candidate:"))
            candidate.sdpMid, candidate.sdpMLineIndex = c.get("sdpMid"), c.get("sdpMLineIndex")
            await link.pc.addIceCandidate(candidate)
        elif kind == "relay":
            self._on_relay(link, msg.get("mid"))
        elif kind == "bye":
            await self._close_pc(link)

    async def _on_peers(self, msg: dict[str, Any]) -> None:
        self.self_id = str(msg["self"])
        listed = {str(p["participantId"]) for p in msg["peers"]}
        for peer_id in list(self.links):
            if peer_id not in listed:
                await self._close_link(self.links.pop(peer_id))
        for peer_id in sorted(listed - set(self.links)):
            link = self.links[peer_id] = CallLink(peer_id)
            if not self.p2p:
                if self.self_id < peer_id:  # one request relays both ways
                    self._send({"type": "relay", "to": peer_id})
            elif self.self_id < peer_id:
                await self._offer(link)
            else:
                self._arm_timeout(link)  # waiting for its offer

    def _new_pc(self, link: CallLink) -> RTCPeerConnection:
        # host candidates only, as whip_client: the peers and the server share a host or a LAN
        pc = RTCPeerConnection()
        link.pc = pc

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            link.drains.append(asyncio.create_task(_drain(track)))

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if link.pc is not pc:
                return
            if pc.connectionState == "connected":
                link.path = "p2p"
                self.connected.set()
            elif pc.connectionState == "failed":
                self._fall_back(link)

        self._arm_timeout(link)
        return pc

    def _arm_timeout(self, link: CallLink) -> None:
        async def expire() -> None:
            await asyncio.sleep(self.p2p_timeout_s)  # the deadline itself, as mesh.js's timer
            if link.path == "connecting":
                self._fall_back(link)

        timer = asyncio.create_task(expire())
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    async def _offer(self, link: CallLink) -> None:
        pc = self._new_pc(link)
        pc.addTrack(self.track_for(link.peer_id))
        await pc.setLocalDescription(await pc.createOffer())
        self._send({"type": "offer", "to": link.peer_id, "sdp": pc.localDescription.sdp})

    async def _on_offer(self, link: CallLink, sdp: str) -> None:
        if link.path == "relay":
            return  # this peer relays; the benchmark's peers do not retry the direct path
        await self._close_pc(link)
        pc = self._new_pc(link)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        pc.addTrack(self.track_for(link.peer_id))  # takes the audio transceiver the offer created
        await pc.setLocalDescription(await pc.createAnswer())
        self._send({"type": "answer", "to": link.peer_id, "sdp": pc.localDescription.sdp})

    def _fall_back(self, link: CallLink) -> None:
        if link.path == "connecting":
            log.warning("call peer %s: no direct path to %s; asking for the relay", self.self_id, link.peer_id)
            self._send({"type": "relay", "to": link.peer_id})

    def _on_relay(self, link: CallLink, mid: str | None) -> None:
        if link.path == "relay" and link.relay_mid == mid:
            return  # both sides asked: the server confirms twice
        link.path = "relay" if mid is not None else "none"
        link.relay_mid = mid
        if link.pc is not None:
            pc, link.pc = link.pc, None
            timer = asyncio.create_task(pc.close())
            self._timers.add(timer)
            timer.add_done_callback(self._timers.discard)
        if mid is not None:
            link.drains.append(asyncio.create_task(_drain(self.session.relay_track(mid))))
        self.connected.set()

    def _send(self, msg: dict[str, Any]) -> None:
        channel = self.session.call_channel
        if channel is not None and channel.readyState == "open":
            self.session.send_call(msg)

    async def p2p_packets_received(self) -> int:
        """Audio packets received over the direct connections (their `inbound-rtp` statistics)."""
        total = 0
        for link in self.links.values():
            if link.pc is None:
                continue
            for stats in (await link.pc.getStats()).values():
                if stats.type == "inbound-rtp" and getattr(stats, "kind", "audio") == "audio":
                    total += stats.packetsReceived
        return total

    def paths(self) -> list[str]:
        return [link.path for link in self.links.values()]

    async def _close_pc(self, link: CallLink) -> None:
        pc, link.pc = link.pc, None
        if pc is not None:
            await pc.close()
        for drain in link.drains:
            drain.cancel()
        link.drains.clear()

    async def _close_link(self, link: CallLink) -> None:
        self._send({"type": "bye", "to": link.peer_id})
        await self._close_pc(link)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for timer in list(self._timers):
            timer.cancel()
        for link in self.links.values():
            await self._close_link(link)


async def _drain(track: MediaStreamTrack) -> None:
    """Play a received track to nowhere, as a page plays it to the speakers: what is not read would pile up."""
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
