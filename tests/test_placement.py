"""Rooms placed across nodes (NATS KV `room-placement`) and the hot state they share in Redis.

* Placement on a real nats-server: one node wins a room, the other is told where it is; a room that closes, a node
  that dies (its keys age out) and a node that drains (SIGTERM) each let another node take the room.
* Redis (a real redis-server on a free port): a revocation reaches another node through Redis, through the store
  while Redis is down, and is shared again once Redis is back; room backlogs wait for Redis and are merged with
  the store's finals.
* Two server processes sharing one nx-27017, nats-server and Redis (slow): a candidate joins node A, the interviewer
  POSTs to node B, is redirected (307) and meets the candidate in A's room; Redis is stopped and a revoked token is
  still refused on both nodes; node A is killed (`kill -9`) and after the placement TTL both re-POST to B, where
  the interview continues: every final is stored exactly once and the numbering continues. And a node killed with
  finals sent but not stored (its store writes held back): the node taking over stores them from the shared segment
  journal (JetStream) with their seq, once each, before numbering new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from adapters.accounts_store import AccountsStore
from adapters.mongo import MongoStore
from adapters.nats_bus import JetStreamBus
from adapters.placement import Owner, Placement
from adapters.shared_state import RedisState
from adapters.tokens import Revocations
from testing.live_server import ADMIN_KEY, TOKEN_SECRET
from testing.nats import NatsServer
from testing.poll import until
from testing.redis import RedisServer, redis_server_binary
from testing.server_process import ServerProcess
from testing.whip_client import WavChannelTrack, WhipError, WhipSession, whip_publish

Events = list[dict[str, Any]]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    binary = redis_server_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("no redis-server binary (.ci/run installs the Debian package redis-server)")
        pytest.skip("no redis-server binary (apt-get install redis-server)")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[JetStreamBus]:
    bus = await JetStreamBus.open(nats_server.url)
    async with asyncio.timeout(15):
        await bus.wait_connected()
    try:
        yield bus
    finally:
        await bus.close()


# ------------------------------------------------------------------------------------------------ placement


async def test_one_node_holds_a_room_and_the_other_is_told_where(bus: JetStreamBus) -> None:
    rooms_a: set[str] = set()
    a = Placement(bus, Owner("node-a", "http://a.test:1"), live=rooms_a.__contains__, ttl_s=5)
    b = Placement(bus, Owner("node-b", "http://b.test:2"), live=lambda iid: False, ttl_s=5)
    iid = "iv-" + uuid.uuid4().hex[:8]
    assert await a.claim(iid) is None  # a holds it
    rooms_a.add(iid)
    assert await a.claim(iid) is None  # and keeps it, without asking NATS again
    owner = await b.claim(iid)
    assert owner == Owner("node-a", "http://a.test:1")
    assert owner.whip_url(iid) == f"http://a.test:1/whip/{iid}"
    await a.refresh()  # a heartbeat keeps it
    assert await b.claim(iid) == owner
    # the shared journal's sweep leaves a room held by a live node alone
    assert await b.held_elsewhere(iid) and not await a.held_elsewhere(iid)
    assert not await b.held_elsewhere("iv-" + uuid.uuid4().hex[:8])  # held by nobody

    rooms_a.discard(iid)
    a.room_closed(iid)  # the last participant left: the room may open anywhere now
    await until(lambda: _claims(b, iid))
    assert await a.claim(iid) == Owner("node-b", "http://b.test:2")


async def _claims(p: Placement, iid: str) -> bool:
    return await p.claim(iid) is None


async def test_a_dead_nodes_rooms_age_out_and_a_draining_nodes_are_released(bus: JetStreamBus) -> None:
    dead = Placement(bus, Owner("node-dead", "http://dead.test:1"), live=lambda iid: True, ttl_s=1)
    iid = "iv-" + uuid.uuid4().hex[:8]
    assert await dead.claim(iid) is None  # and then it refreshes nothing: killed
    b = Placement(bus, Owner("node-b", "http://b.test:2"), live=lambda iid: True, ttl_s=1)
    assert await b.claim(iid) == Owner("node-dead", "http://dead.test:1")
    await until(lambda: _claims(b, iid), within_s=15)  # after the TTL

    draining = Placement(bus, Owner("node-c", "http://c.test:3"), live=lambda iid: True, ttl_s=30)
    other = "iv-" + uuid.uuid4().hex[:8]
    assert await draining.claim(other) is None
    draining.drain()
    draining.room_closed(other)  # closing while draining keeps the key: its finals are not stored yet
    assert await b.claim(other) == Owner("node-c", "http://c.test:3")
    await draining.release_all()  # stored: participants who re-POST land elsewhere at once
    assert await b.claim(other) is None


async def test_a_node_restarted_on_the_same_address_takes_its_rooms_back(bus: JetStreamBus) -> None:
    before = Placement(bus, Owner("node-a-1", "http://a.test:1"), live=lambda iid: True, ttl_s=30)
    iid = "iv-" + uuid.uuid4().hex[:8]
    assert await before.claim(iid) is None
    after = Placement(bus, Owner("node-a-2", "http://a.test:1"), live=lambda iid: True, ttl_s=30)
    assert await after.claim(iid) is None  # not a redirect to itself
    assert await Placement(bus, Owner("node-b", "http://b.test:2"), live=lambda iid: True,
                           ttl_s=30).claim(iid) == Owner("node-a-2", "http://a.test:1")
    # nodes with no address (in-process servers) are not one node restarted: the second does not take the room
    no_address = Placement(bus, Owner("node-x", ""), live=lambda iid: True, ttl_s=30)
    other = "iv-" + uuid.uuid4().hex[:8]
    assert await no_address.claim(other) is None
    assert await Placement(bus, Owner("node-y", ""), live=lambda iid: True, ttl_s=30).claim(other) == Owner(
        "node-x", "")


# ---------------------------------------------------------------------------------------------------- Redis


async def test_a_revocation_reaches_other_nodes_through_redis_or_the_store_while_redis_is_down(
    store: MongoStore, redis_server: RedisServer
) -> None:
    accounts = AccountsStore(store.db)
    await accounts.create_indexes()
    shared_a, shared_b = RedisState(redis_server.url, retry_s=0.2), RedisState(redis_server.url, retry_s=0.2)
    node_a = Revocations(accounts, shared=shared_a)
    node_b = Revocations(accounts, shared=shared_b)
    heard: list[tuple[str, str | None]] = []

    async def listener(iid: str, token_id: str | None) -> None:
        heard.append((iid, token_id))

    node_b.listeners.append(listener)
    try:
        await node_a.revoke("iv-1", "jti-1", until=4e9)
        assert await node_b.load_shared()  # from Redis, without reading the store
        assert heard == [("iv-1", "jti-1")]

        redis_server.stop()
        await node_a.revoke("iv-1", "jti-2", until=4e9)  # stored; Redis does not answer
        assert not await node_b.load_shared()
        await node_b.load()  # the fallback: the store
        assert ("iv-1", "jti-2") in heard

        redis_server.start()  # same port, empty: what was revoked before is in no Redis now
        await asyncio.sleep(0.25)  # past the breaker's retry_s, so the next call tries Redis again
        assert await node_b.load_shared()  # back: node b shares what it knows first
        reader = Revocations(None, shared=RedisState(redis_server.url))  # a node that reads Redis only
        assert await reader.load_shared()
        assert set(reader.known()) >= {("iv-1", "jti-1"), ("iv-1", "jti-2")}
        assert reader.shared is not None
        await reader.shared.aclose()  # type: ignore[attr-defined]
    finally:
        await shared_a.aclose()
        await shared_b.aclose()


async def test_room_backlogs_wait_for_redis_and_give_way_to_the_store(redis_server: RedisServer) -> None:
    import redis.asyncio

    from adapters.metrics import Metrics
    from adapters.rooms import RoomRegistry

    shared = RedisState(redis_server.url, retry_s=0.2)
    shared.start()
    admin = redis.asyncio.from_url(redis_server.url)
    try:
        iid = "iv-" + uuid.uuid4().hex[:8]
        speaker = {"role": "candidate", "name": "C", "participantId": "p1"}
        final = {"type": "segment.final", "seq": 0, "text": "hello", "speaker": speaker}
        sentiment = {"type": "sentiment", "seq": 0, "speaker": speaker}
        shared.append_backlog(iid, json.dumps(final))
        await shared.flush()
        await admin.execute_command("CLIENT", "PAUSE", "1500", "WRITE")  # Redis stops taking writes for 1.5 s
        shared.append_backlog(iid, json.dumps(sentiment))  # waits in the queue, written once Redis takes it
        await until(lambda: _has(shared, iid, 2), within_s=10)
        assert [json.loads(t)["type"] for t in await shared.backlog(iid) or []] == ["segment.final", "sentiment"]

        stored = [final, {**final, "seq": 1, "text": "stored by a node that died before sharing it"}]

        async def stored_finals(_: str) -> list[str]:
            return [json.dumps(f) for f in stored]

        registry = RoomRegistry(stream_factory=None, metrics=Metrics(),  # type: ignore[arg-type]
                                stored_finals=stored_finals, shared_backlog=shared)
        # a node taking the room over: the store has a final the shared backlog lacks, so the store's are the backlog
        assert [(h["type"], h["seq"]) for h in map(json.loads, await registry._history(iid))] == [
            ("segment.final", 0), ("segment.final", 1)]
        stored.pop()  # the shared backlog has every stored final: it is the backlog, sentiment included
        assert [(h["type"], h["seq"]) for h in map(json.loads, await registry._history(iid))] == [
            ("segment.final", 0), ("sentiment", 0)]
    finally:
        await admin.aclose()
        await shared.aclose()


async def test_a_trimmed_shared_backlog_still_serves_a_long_interview(redis_server: RedisServer) -> None:
    """Redis keeps the last `backlog` entries (finals, sentiment, ...): older stored finals outside that span are not
    holes, so the shared backlog (sentiment included) is still what a node taking the room over gives."""
    from adapters.metrics import Metrics
    from adapters.rooms import RoomRegistry

    shared = RedisState(redis_server.url, backlog=4)
    shared.start()
    try:
        iid = "iv-" + uuid.uuid4().hex[:8]
        speaker = {"role": "candidate", "name": "C", "participantId": "p1"}
        finals = [{"type": "segment.final", "seq": n, "text": f"answer {n}", "speaker": speaker} for n in range(3)]
        for final in finals:
            shared.append_backlog(iid, json.dumps(final))
            shared.append_backlog(iid, json.dumps({"type": "sentiment", "seq": final["seq"], "speaker": speaker}))
        await shared.flush()
        assert len(await shared.backlog(iid) or []) == 4  # final 0 and its sentiment were trimmed

        async def stored_finals(_: str) -> list[str]:
            return [json.dumps(f) for f in finals]

        registry = RoomRegistry(stream_factory=None, metrics=Metrics(),  # type: ignore[arg-type]
                                stored_finals=stored_finals, shared_backlog=shared)
        assert [(h["type"], h["seq"]) for h in map(json.loads, await registry._history(iid))] == [
            ("segment.final", 1), ("sentiment", 1), ("segment.final", 2), ("sentiment", 2)]
    finally:
        await shared.aclose()


async def test_room_backlogs_are_sealed_in_redis(redis_server: RedisServer) -> None:
    """Transcript text is in Redis only sealed; a node with the same master key reads it, one with another key gets
    "unknown" (and so takes the store's finals) rather than an error."""
    import redis.asyncio

    from adapters.crypto import MasterKeys

    master = MasterKeys.generate()
    writer = RedisState(redis_server.url, key=master.shared_state_key())
    reader = RedisState(redis_server.url, key=master.shared_state_key())
    stranger = RedisState(redis_server.url, key=MasterKeys.generate().shared_state_key())
    writer.start()
    admin = redis.asyncio.from_url(redis_server.url)
    try:
        iid = "iv-" + uuid.uuid4().hex[:8]
        final = json.dumps({"type": "segment.final", "seq": 0, "text": "my maiden name is Oakley",
                            "speaker": {"role": "candidate", "name": "C", "participantId": "p1"}})
        writer.append_backlog(iid, final)
        await writer.flush()
        raw = await admin.lrange(f"{writer.prefix}backlog:{iid}", 0, -1)
        assert len(raw) == 1 and b"Oakley" not in raw[0] and raw[0].startswith(b"enc1:")
        assert await reader.backlog(iid) == [final]
        assert await stranger.backlog(iid) is None
    finally:
        await admin.aclose()
        for shared in (writer, reader, stranger):
            await shared.aclose()


async def _has(shared: RedisState, iid: str, n: int) -> bool:
    items = await shared.backlog(iid)
    return items is not None and len(items) >= n


# ------------------------------------------------------------------------------------ two server processes


def finals_with_text(events: Events) -> dict[tuple[str, int], str]:
    return {(e["speaker"]["role"], e["seq"]): e["text"] for e in events if e["type"] == "segment.final" and e["text"]}


async def collect(session: WhipSession, into: Events, done: Any, within_s: float) -> None:
    try:
        async with asyncio.timeout(within_s):
            while not done(into):
                into.append(await session.events.get())
    except TimeoutError:
        got = [(e["type"], (e.get("speaker") or {}).get("role"), e.get("seq"), e.get("text") or e.get("code"))
               for e in into if e["type"] not in ("level", "segment.partial", "sentiment", "keywords")]
        pytest.fail(f"not within {within_s} s; received {got}")


async def publish_eventually(url: str, token: str, within_s: float, **kwargs: Any) -> WhipSession:
    """`whip_publish` until a node takes the POST: a redirect to a dead node fails until its placement ages out."""
    async with asyncio.timeout(within_s):
        while True:
            try:
                return await whip_publish(url, token, **kwargs)
            except WhipError:
                await asyncio.sleep(0.5)


@pytest.mark.slow
async def test_two_nodes_redirect_to_the_owner_and_take_over_a_killed_nodes_room(
    tmp_path: Path, mongo_url: str, nats_server: NatsServer, redis_server: RedisServer, shared_data: Path
) -> None:
    wav = shared_data / "mobile_mixed.stereo.wav"
    env = {"MONGODB_URL": mongo_url, "MONGODB_DB": f"test_{uuid.uuid4().hex[:16]}", "NATS_URL": nats_server.url,
           "REDIS_URL": redis_server.url, "TOKEN_SECRET": TOKEN_SECRET,
           "MASTER_KEY_FILE": str(tmp_path / "master_key"), "PLACEMENT_TTL_S": "3", "STT_WORKERS": "1",
           "GUIDANCE": "false", "RESUME_GRACE_S": "1", "WHIP_JOIN_LIMIT": "1000/minute"}
    node_a = ServerProcess(tmp_path / "a", admin_key=ADMIN_KEY, env=env)
    node_b = ServerProcess(tmp_path / "b", admin_key=ADMIN_KEY, env=env)
    for node in (node_a, node_b):
        node.extra_env["PUBLIC_URL"] = node.url  # where the other node redirects WHIP clients to
    await node_a.start()  # first: it creates the master key both use
    await node_b.start()
    sessions: list[WhipSession] = []
    try:
        async with httpx.AsyncClient(base_url=node_b.url, timeout=30,
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            r = await http.post("/api/interviews", json={"candidateId": "c-nodes", "jobId": "j-nodes",
                                                         "scheduledAt": "2030-01-01T09:00:00Z"})  # fmt: skip
            assert r.status_code == 201, r.text
            iid = r.json()["interviewId"]
            tokens = {}
            for role in ("candidate", "interviewer", "observer"):
                t = await http.post(f"/api/interviews/{iid}/tokens", json={"role": role, "name": role.title()})
                assert t.status_code == 201, t.text
                tokens[role] = t.json()

            # the candidate opens the room on A; the interviewer and an observer ask B and are sent to A
            candidate = await whip_publish(f"{node_a.url}/whip/{iid}", tokens["candidate"]["token"],
                                           track=WavChannelTrack(wav, 1))
            sessions.append(candidate)
            assert candidate.location.startswith(f"{node_a.url}/whip/{iid}/")
            raw = await http.post(f"/whip/{iid}", content=b"v=0\r\n", headers={
                "Authorization": f"Bearer {tokens['interviewer']['token']}", "Content-Type": "application/sdp"})
            assert raw.status_code == 307 and raw.headers["location"] == f"{node_a.url}/whip/{iid}"
            interviewer = await whip_publish(f"{node_b.url}/whip/{iid}", tokens["interviewer"]["token"],
                                             track=WavChannelTrack(wav, 0), analysis=True)
            sessions.append(interviewer)
            assert interviewer.location.startswith(f"{node_a.url}/whip/{iid}/")
            observer = await whip_publish(f"{node_b.url}/whip/{iid}", tokens["observer"]["token"], track=None,
                                          analysis=True)
            sessions.append(observer)
            before: Events = []
            await collect(interviewer, before, lambda ev: {r for r, _ in finals_with_text(ev)} >= {
                "candidate", "interviewer"}, within_s=180)  # they meet in one room: A's

            # Redis goes down mid-interview: a token revoked on B still ends its session on A (through the
            # store) and is refused by both nodes
            redis_server.stop()
            jti = jwt.decode(tokens["observer"]["token"], options={"verify_signature": False})["jti"]
            r = await http.delete(f"/api/interviews/{iid}/tokens/{jti}")
            assert r.status_code == 200, r.text
            observer_id = tokens["observer"]["participantId"]
            # A closes the session when its revocation reload finds the revocation in the store
            await collect(interviewer, before, lambda ev: any(
                e["type"] == "participant.left" and e["speaker"]["participantId"] == observer_id for e in ev), 30)
            for node in (node_a, node_b):
                with pytest.raises(WhipError) as refused:
                    await whip_publish(f"{node.url}/whip/{iid}", tokens["observer"]["token"], track=None,
                                       analysis=True)
                assert refused.value.status == 401

            await collect(interviewer, before, lambda ev: len(finals_with_text(ev)) >= 4, within_s=180)
            # kill -9 once A has stored what it sent (a final sent in the few ms before its write stays in A's
            # journal until A restarts: README, "Several nodes"); no drain, no release: its placement ages out
            async with asyncio.timeout(60):
                while True:
                    while not interviewer.events.empty():
                        before.append(interviewer.events.get_nowait())
                    stored = await _stored(http, iid)
                    if {(s["speaker"]["role"], s["seq"]) for s in stored} >= set(finals_with_text(before)):
                        break
                    await asyncio.sleep(0.2)  # persisting runs behind a queue
            node_a.kill()
            await asyncio.sleep(0.5)
            while not interviewer.events.empty():
                before.append(interviewer.events.get_nowait())
            sent = finals_with_text(before)
            last_seq = {role: max(seq for r, seq in sent if r == role) for role, _ in sent}
            for s in sessions:
                await s.close()  # DELETEs to A fail (logged): it is gone
            sessions.clear()

            # both re-POST to B: redirected to dead A until its placement ages out, then B takes the room
            interviewer = await publish_eventually(f"{node_b.url}/whip/{iid}", tokens["interviewer"]["token"], 60,
                                                   track=WavChannelTrack(wav, 0, limit_s=12), analysis=True)
            sessions.append(interviewer)
            assert interviewer.location.startswith(f"{node_b.url}/whip/{iid}/")
            candidate = await whip_publish(f"{node_b.url}/whip/{iid}", tokens["candidate"]["token"],
                                           track=WavChannelTrack(wav, 1, limit_s=12))
            sessions.append(candidate)
            after: Events = []

            def new_finals(ev: Events) -> dict[tuple[str, int], str]:
                return {k: t for k, t in finals_with_text(ev).items() if k[1] > last_seq.get(k[0], -1)}

            await collect(interviewer, after, lambda ev: {r for r, _ in new_finals(ev)} >= {"interviewer",
                                                                                           "candidate"}, 180)
            # B's late viewer got what was said on A (a final revised since comes as its `segment.revised`)
            backlog = {(e["speaker"]["role"], e["seq"]) for e in after if e["type"] in ("segment.final",
                                                                                     "segment.revised")}
            assert backlog >= set(sent), (sorted(sent), sorted(backlog))
            await candidate.close()
            await collect(interviewer, after, lambda ev: any(
                e["type"] == "participant.left" and e["speaker"]["role"] == "candidate" for e in ev), 60)
            resumed = new_finals(after)
            expected = set(sent) | set(resumed)
            async with asyncio.timeout(60):
                while True:
                    stored = await _stored(http, iid)
                    if {(s["speaker"]["role"], s["seq"]) for s in stored} >= expected:
                        break
                    await asyncio.sleep(0.5)  # persisting runs behind a queue
            keys = [(s["speaker"]["role"], s["seq"]) for s in stored]
            assert len(keys) == len(set(keys)), f"a segment is stored twice: {sorted(keys)}"
            by_key = {(s["speaker"]["role"], s["seq"]): s for s in stored}
            for key, text in {**sent, **resumed}.items():
                assert by_key[key].get("originalText", by_key[key]["text"]) == text, (key, by_key[key], text)
            for role in ("interviewer", "candidate"):  # numbering continues where A left it
                assert min(seq for r, seq in resumed if r == role) > last_seq[role], (role, sorted(resumed))
    finally:
        for s in sessions:
            with contextlib.suppress(Exception):
                await s.close()
        node_b.stop()
        node_a.stop()


@pytest.mark.slow
async def test_finals_a_killed_node_sent_but_never_stored_are_stored_once_by_the_node_taking_over(
    tmp_path: Path, mongo_url: str, nats_server: NatsServer, shared_data: Path
) -> None:
    """Node A journals each final in the shared journal (JetStream) and sends it, but its store writes are held back
    (SEGMENT_STORE_DELAY_S, a test-only setting): killed, it leaves them in the journal only. Node B, taking the room
    over, stores them with their seq before numbering anything: each once, and the next finals continue after."""
    wav = shared_data / "mobile_mixed.stereo.wav"
    env = {"MONGODB_URL": mongo_url, "MONGODB_DB": f"test_{uuid.uuid4().hex[:16]}", "NATS_URL": nats_server.url,
           "TOKEN_SECRET": TOKEN_SECRET, "MASTER_KEY_FILE": str(tmp_path / "master_key"), "PLACEMENT_TTL_S": "3",
           "STT_WORKERS": "1", "GUIDANCE": "false", "RESUME_GRACE_S": "1", "WHIP_JOIN_LIMIT": "1000/minute"}
    node_a = ServerProcess(tmp_path / "a", admin_key=ADMIN_KEY, env={**env, "SEGMENT_STORE_DELAY_S": "3600"})
    node_b = ServerProcess(tmp_path / "b", admin_key=ADMIN_KEY, env=env)
    for node in (node_a, node_b):
        node.extra_env["PUBLIC_URL"] = node.url
    await node_a.start()  # first: it creates the master key both use
    await node_b.start()
    sessions: list[WhipSession] = []
    try:
        async with httpx.AsyncClient(base_url=node_b.url, timeout=30,
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            r = await http.post("/api/interviews", json={"candidateId": "c-journal", "jobId": "j-journal",
                                                         "scheduledAt": "2030-01-01T09:00:00Z"})  # fmt: skip
            assert r.status_code == 201, r.text
            iid = r.json()["interviewId"]
            tokens = {}
            for role in ("candidate", "interviewer"):
                t = await http.post(f"/api/interviews/{iid}/tokens", json={"role": role, "name": role.title()})
                assert t.status_code == 201, t.text
                tokens[role] = t.json()["token"]
            interviewer = await whip_publish(f"{node_a.url}/whip/{iid}", tokens["interviewer"],
                                             track=WavChannelTrack(wav, 0), analysis=True)
            sessions.append(interviewer)
            sessions.append(await whip_publish(f"{node_a.url}/whip/{iid}", tokens["candidate"],
                                               track=WavChannelTrack(wav, 1)))
            before: Events = []
            await collect(interviewer, before, lambda ev: len(finals_with_text(ev)) >= 3, within_s=180)
            assert await _stored(http, iid) == []  # sent to the interviewer, not stored: A holds its writes back
            node_a.kill()
            await asyncio.sleep(0.5)
            while not interviewer.events.empty():
                before.append(interviewer.events.get_nowait())
            sent = finals_with_text(before)
            last_seq = {role: max(seq for r, seq in sent if r == role) for role, _ in sent}
            for s in sessions:
                await s.close()  # DELETEs to A fail (logged): it is gone
            sessions.clear()
            journal_file = tmp_path / "a" / "segments.journal"  # journaled in NATS, not only on A's disk
            assert not journal_file.exists() or journal_file.read_text() == ""

            interviewer = await publish_eventually(f"{node_b.url}/whip/{iid}", tokens["interviewer"], 60,
                                                   track=WavChannelTrack(wav, 0, limit_s=12), analysis=True)
            sessions.append(interviewer)
            assert interviewer.location.startswith(f"{node_b.url}/whip/{iid}/")
            candidate = await whip_publish(f"{node_b.url}/whip/{iid}", tokens["candidate"],
                                           track=WavChannelTrack(wav, 1, limit_s=12))
            sessions.append(candidate)
            # B stored A's journaled finals before opening the room: they are in its backlog, with their seq
            after: Events = []

            def new_finals(ev: Events) -> dict[tuple[str, int], str]:
                return {k: t for k, t in finals_with_text(ev).items() if k[1] > last_seq.get(k[0], -1)}

            await collect(interviewer, after, lambda ev: {r for r, _ in new_finals(ev)} >= {"interviewer",
                                                                                           "candidate"}, 180)
            backlog = {(e["speaker"]["role"], e["seq"]) for e in after if e["type"] == "segment.final"}
            assert backlog >= set(sent), (sorted(sent), sorted(backlog))
            await candidate.close()
            await collect(interviewer, after, lambda ev: any(
                e["type"] == "participant.left" and e["speaker"]["role"] == "candidate" for e in ev), 60)
            resumed = new_finals(after)
            expected = set(sent) | set(resumed)
            async with asyncio.timeout(60):
                while True:
                    stored = await _stored(http, iid)
                    if {(s["speaker"]["role"], s["seq"]) for s in stored} >= expected:
                        break
                    await asyncio.sleep(0.5)  # persisting runs behind a queue
            keys = [(s["speaker"]["role"], s["seq"]) for s in stored]
            assert len(keys) == len(set(keys)), f"a segment is stored twice: {sorted(keys)}"
            by_key = {(s["speaker"]["role"], s["seq"]): s for s in stored}
            for key, text in {**sent, **resumed}.items():
                assert by_key[key].get("originalText", by_key[key]["text"]) == text, (key, by_key[key], text)
            for role in ("interviewer", "candidate"):  # numbering continues after A's journaled finals
                assert min(seq for r, seq in resumed if r == role) > last_seq[role], (role, sorted(resumed))
            print(f"A sent {len(sent)} finals it never stored; B stored them and {len(resumed)} new ones, "
                  f"{len(stored)} in all, each once")
    finally:
        for s in sessions:
            with contextlib.suppress(Exception):
                await s.close()
        node_b.stop()
        node_a.stop()


async def _stored(http: httpx.AsyncClient, iid: str) -> list[dict[str, Any]]:
    r = await http.get(f"/api/interviews/{iid}/transcript")
    assert r.status_code == 200, r.text
    return r.json()["segments"]  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------ the transcript cache in Redis

SECRET = "my maiden name is Oakley"


def _final(seq: int, text: str, revision: int = 0) -> Any:
    from domain.events import SegmentEvent, Speaker, Word

    return SegmentEvent(speaker=Speaker("candidate", "Cam", "p1"), seq=seq, start_s=seq, end_s=seq + 1, text=text,
                        final=True, words=[Word(w, seq, seq + 0.5, 0.9) for w in text.split()], revision=revision)


@pytest.fixture
async def sealed_store(mongo_url: str, tmp_path: Path) -> AsyncIterator[MongoStore]:
    store = await MongoStore.connect(mongo_url, db_name=f"test_{uuid.uuid4().hex[:16]}",
                                     key_file=tmp_path / "master_key")
    try:
        yield store
    finally:
        await store.drop_database()
        await store.close()


async def test_the_transcript_cache_is_shared_by_nodes_sealed_and_never_older_than_the_store(
    sealed_store: MongoStore, redis_server: RedisServer, tmp_path: Path
) -> None:
    import redis.asyncio

    from domain.commands import CreateCandidate, CreateInterview, InterviewService

    store = sealed_store
    assert store.keyring is not None
    key = store.keyring.master.shared_state_key()
    shared_a = RedisState(redis_server.url, key=key, retry_s=0.2, transcript_key=store.interview_key)
    shared_b = RedisState(redis_server.url, key=key, retry_s=0.2, transcript_key=store.interview_key)
    node_a, node_b = InterviewService(store, transcripts=shared_a), InterviewService(store, transcripts=shared_b)
    admin = redis.asyncio.from_url(redis_server.url)
    shared_a.start()
    try:
        cid = (await node_a.create_candidate(CreateCandidate.parse({"name": "Cam", "email": "cam@example.org"})))[
            "candidateId"]
        iid = (await node_a.create_interview(CreateInterview.parse(
            {"candidateId": cid, "jobId": "job-1", "scheduledAt": "2026-12-01T09:00:00Z"})))["interviewId"]
        await node_a.start_interview(iid)
        await node_a.record_segment(iid, _final(0, SECRET))
        await node_a.record_segment(iid, _final(1, "I worked on lighthouses"))

        def texts(transcript: dict[str, Any]) -> list[str]:
            return [s["text"] for s in transcript["segments"]]

        first = await node_a.get_transcript(iid)  # read from the store, then kept in Redis
        assert texts(first) == [SECRET, "I worked on lighthouses"] and (shared_a.hits, shared_a.misses) == (0, 1)
        assert await node_b.get_transcript(iid) == first  # the other node reads what node a kept
        assert (shared_b.hits, shared_b.misses) == (1, 0)
        raw = await admin.get(f"{shared_a.prefix}transcript:{iid}")
        assert raw is not None and raw.startswith(b"enc1:") and b"Oakley" not in raw and b"lighthouses" not in raw
        assert (await node_b.get_interview(iid))["transcription"]["segments"] == first["segments"]  # the interview too

        # a revision stored by node b: node a's next read shows it (the kept entry is of an older stamp)
        await node_b.record_revision(iid, _final(1, "I worked on light houses", revision=1))
        revised = await node_a.get_transcript(iid)
        assert texts(revised) == [SECRET, "I worked on light houses"] and revised["segments"][1]["revision"] == 1
        assert revised["segments"][1]["originalText"] == "I worked on lighthouses"
        assert await node_b.get_transcript(iid) == revised and shared_b.hits == 3  # kept again by node a

        # Redis stops answering while it still holds the last entry, and a revision is stored meanwhile: the
        # store answers during the pause, and once Redis answers again the old entry is not served either
        await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        await node_a.record_revision(iid, _final(0, "my maiden name is Oakley-Smith", revision=1))
        during = await node_b.get_transcript(iid)
        assert texts(during)[0] == "my maiden name is Oakley-Smith"
        await until(lambda: _redis_answers(shared_b), within_s=10)
        assert (await node_b.get_transcript(iid))["segments"] == during["segments"]

        # erasure deletes the kept transcript with the segments
        from adapters.crypto import ReceiptSigner, Unreadable
        from adapters.privacy import Privacy

        assert await admin.exists(f"{shared_a.prefix}transcript:{iid}")
        kept = await admin.get(f"{shared_a.prefix}transcript:{iid}")  # as a Redis snapshot or backup holds it
        # sealed with the candidate's data key, not the node's: the node key alone does not open it
        with pytest.raises(Unreadable):
            key.open(f"transcript:{iid}", kept.decode())
        signer = ReceiptSigner.load_or_create(tmp_path / "receipt_key.pem")
        await Privacy(store, node_a, signer).erase(cid, reason="request", by="test", request_id="r1")
        assert not await admin.exists(f"{shared_a.prefix}transcript:{iid}")
        assert (await node_b.get_transcript(iid))["segments"] == []
        # the copy a backup kept is unreadable once the candidate's key is destroyed
        await admin.set(f"{shared_a.prefix}transcript:{iid}", kept)
        assert await shared_b.transcript(iid, (2, 2)) is None
    finally:
        await admin.aclose()
        await shared_a.aclose()
        await shared_b.aclose()


async def test_the_api_answers_from_the_store_while_redis_is_down(
    sealed_store: MongoStore, redis_server: RedisServer, tmp_path: Path
) -> None:
    from domain.commands import CreateInterview, InterviewService
    from testing.api import ADMIN_KEY as API_KEY
    from testing.api import api_app

    store = sealed_store
    shared = RedisState(redis_server.url, retry_s=0.2)
    service = InterviewService(store, transcripts=shared)
    app = (await api_app(store, service, tmp_path)).app
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test",
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            iid = (await service.create_interview(CreateInterview.parse(
                {"candidateId": "c1", "jobId": "job-1", "scheduledAt": "2026-12-01T09:00:00Z"})))["interviewId"]
            await service.start_interview(iid)
            await service.record_segment(iid, _final(0, "hello there"))
            r = await client.get(f"/api/interviews/{iid}/transcript")
            assert r.status_code == 200 and [s["text"] for s in r.json()["segments"]] == ["hello there"]

            redis_server.stop()
            await service.record_segment(iid, _final(1, "second answer"))
            await service.record_revision(iid, _final(0, "hello, there", revision=1))
            for _ in range(2):  # the failing call, then the breaker's fast "unknown"
                r = await client.get(f"/api/interviews/{iid}/transcript")
                assert r.status_code == 200
                assert [s["text"] for s in r.json()["segments"]] == ["hello, there", "second answer"]
            r = await client.get(f"/api/interviews/{iid}")
            assert r.status_code == 200 and len(r.json()["transcription"]["segments"]) == 2

            redis_server.start()  # empty again: the next read fills it
            await until(lambda: _redis_answers(shared), within_s=10)
            r = await client.get(f"/api/interviews/{iid}/transcript")
            assert [s["text"] for s in r.json()["segments"]] == ["hello, there", "second answer"]
    finally:
        await shared.aclose()


async def _redis_answers(shared: RedisState) -> bool:
    return await shared.list_revocations(0.0) is not None
