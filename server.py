"""interview-worker: the composition root. `python server.py` runs the whole service on embedded defaults.

Settings come from the environment once (`Settings.from_env`), typed and validated; secrets never reach a
log line or a repr. The Starlette lifespan builds every adapter with plain code (store, bus + outbox
relay, speech-to-text, rooms, WHIP) and tears them down in an order that loses nothing: stop reading
audio, drain every stream to final segments (still sent to connected interviewers), persist them, close
peer connections, stop STT, flush the outbox to the bus, close the store.

Routes need the built service, and Starlette reads `router.routes` on every request, so the lifespan
installs them after building (uvicorn serves nothing before the lifespan has started).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from settings import Settings

if TYPE_CHECKING:  # the composition root imports its adapters lazily: nothing heavy at import time
    from adapters.accounts_store import AccountsStore
    from adapters.analysis_jobs import AnalysisJobs
    from adapters.audit import AuditLog
    from adapters.auth import Accounts
    from adapters.call import CallHub
    from adapters.crypto import ReceiptSigner
    from adapters.http_edge import Audit, AuditSink
    from adapters.metrics import Metrics
    from adapters.mongo import EmbeddedMongo, MongoStore
    from adapters.nats_embedded import EmbeddedNats
    from adapters.outbox import EventBus, OutboxRelay
    from adapters.placement import Placement
    from adapters.privacy import Privacy
    from adapters.rate_limits import RateLimits
    from adapters.rooms import GuidanceFactory, Room, RoomRegistry
    from adapters.shared_state import RedisState
    from adapters.tokens import Revocations, TokenSigner
    from adapters.webrtc import WhipIngest
    from domain.commands import InterviewService
    from domain.events import ProtectedTopicAlert, Speaker, StreamEvent
    from pipeline.scheduler import SttScheduler
    from pipeline.smart_turn import SmartTurn

log = logging.getLogger("interview_worker")


def _stored_secret(path: Path, nbytes: int = 32) -> tuple[str, bool]:
    """The secret in `path`, created (mode 0600) on first use. Returns it and whether it was just created."""
    try:
        value = path.read_text().strip()
        if value:
            return value, False
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(nbytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value, True


@dataclass(slots=True)
class Secrets:
    admin_api_key: str
    admin_key_generated: bool  # embedded mode: came from DATA_DIR, so printing it is the way to learn it
    token_secret: bytes
    turn_secret: bytes | None = None
    setup_token: str | None = None  # the one-time setup link's token (first embedded start without users)

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"


def resolve_secrets(settings: Settings) -> Secrets:
    if settings.admin_api_key:
        admin, generated = settings.admin_api_key, False
    else:
        admin, _ = _stored_secret(settings.data_dir / "admin_api_key")
        generated = True
    token = settings.token_secret or _stored_secret(settings.data_dir / "token_secret")[0]
    turn = settings.turn_secret.encode() if settings.turn_secret else None
    return Secrets(admin, generated, token.encode(), turn)


# ---- application -------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Components:
    """Everything the lifespan built, in build order (teardown runs in reverse, see `_teardown`). A field is None
    until `_build` has made it, so a failed start tears down exactly what exists."""

    settings: Settings
    secrets: Secrets
    metrics: Metrics
    embedded: EmbeddedMongo | None = None
    embedded_nats: EmbeddedNats | None = None
    store: MongoStore | None = None
    audit_log: AuditLog | None = None  # the hash-chained trail (AUDIT=true)
    service: InterviewService | None = None
    analysis: AnalysisJobs | None = None
    bus: EventBus | None = None
    relay: OutboxRelay | None = None
    scheduler: SttScheduler | None = None
    turn_audio: SmartTurn | None = None  # TURN_AUDIO_MODEL
    registry: RoomRegistry | None = None
    call: CallHub | None = None
    whip: WhipIngest | None = None
    placement: Placement | None = None
    node_url: str | None = None  # where this node listens (serve() knows; in-process tests do not)
    signer: TokenSigner | None = None
    accounts_store: AccountsStore | None = None
    accounts: Accounts | None = None
    limits: RateLimits | None = None
    shared: RedisState | None = None  # REDIS_URL: revocations and room backlogs shared by every node
    revocations: Revocations | None = None
    audit: Audit | None = None  # the audit trail's call site; its sink is adapters.audit.AuditLog
    receipts: ReceiptSigner | None = None
    privacy: Privacy | None = None
    retention: asyncio.Task[None] | None = None
    journal_sweep: asyncio.Task[None] | None = None  # stores the shared journal's entries of rooms open nowhere
    trims: set[asyncio.Task[None]] = field(default_factory=set)  # a pending malloc_trim after a room closed
    trim_again: bool = False  # a room closed while a trim was pending or running: trim once more after it
    ready: bool = False


async def _build(c: Components) -> None:
    from aiortc import RTCIceServer

    from adapters.accounts_store import AccountsStore
    from adapters.audit import AuditEntry, AuditLog, move_trail
    from adapters.auth import AccessTokens, Accounts, KeyRing
    from adapters.call import CallHub, IceConfig
    from adapters.crypto import ReceiptSigner
    from adapters.http_edge import Audit
    from adapters.mongo import EmbeddedMongo, MongoStore
    from adapters.nats_bus import JetStreamBus
    from adapters.nats_embedded import EmbeddedNats
    from adapters.outbox import OutboxRelay
    from adapters.placement import Owner, Placement
    from adapters.privacy import Privacy
    from adapters.rooms import RoomRegistry, SegmentJournal
    from adapters.shared_journal import SharedJournal
    from adapters.shared_state import MemoryTranscripts, RedisState
    from adapters.stt_engines import build_stt
    from adapters.tokens import Revocations, TokenSigner
    from adapters.webrtc import WhipIngest
    from domain.commands import InterviewService
    from pipeline import smart_turn
    from pipeline.scheduler import SttScheduler
    from pipeline.stream import Conversation, ParticipantStream, StreamConfig

    s = c.settings
    s.data_dir.mkdir(parents=True, exist_ok=True)
    url = s.mongodb_url
    if url is None:
        c.embedded = EmbeddedMongo(s.data_dir)
        url = await c.embedded.start()
    metrics = c.metrics
    c.store = store = await MongoStore.connect(url, db_name=s.mongodb_db, key_file=s.master_key_path,
                                               on_unreadable=lambda: metrics.error("decrypt"))
    c.accounts_store = accounts_store = AccountsStore(store.db)
    await accounts_store.create_indexes()
    c.limits = limits = build_limits(s)
    if s.redis_url:
        c.shared = RedisState(s.redis_url, backlog=500, backlog_ttl_s=s.token_ttl_s + 3600,
                              key=store.keyring.master.shared_state_key() if store.keyring is not None else None,
                              transcript_key=store.interview_key)
        c.shared.start()
    c.revocations = revocations = Revocations(accounts_store, shared=c.shared, keep_s=s.token_ttl_s + 60)
    await revocations.load()
    revocations.start()
    c.signer = signer = TokenSigner(c.secrets.token_secret, ttl_s=s.token_ttl_s, revocations=revocations)
    access = AccessTokens(KeyRing(s.data_dir / "jwt_keys.json"), ttl_s=s.access_token_ttl_s)
    c.accounts = Accounts(accounts_store, access, signer, limits, admin_api_key=c.secrets.admin_api_key,
                          refresh_ttl_s=s.refresh_token_ttl_s)
    if s.mongodb_url is None and not s.admin_api_key:
        c.secrets.setup_token = await c.accounts.open_setup()
        if c.secrets.setup_token is not None:  # the link itself goes to standard output only (see serve)
            log.warning("no users yet: open the one-time setup link printed on standard output to create the "
                        "first admin (or run python server.py create-admin EMAIL)")
    if s.audit:
        audit_db = store.client[s.audit_db_name]
        await move_trail(store.db, audit_db)
        c.audit_log = audit_log = AuditLog(audit_db, metrics=c.metrics, max_queue=s.audit_queue_max,
                                           spill_path=s.data_dir / "audit.spill.jsonl")
        await audit_log.start()
        c.audit = audit = Audit(audit_log, AuditEntry)
    else:
        c.audit = audit = Audit()
    nats_url = s.nats_url
    if nats_url is None:
        c.embedded_nats = EmbeddedNats(s.data_dir)
        nats_url = await c.embedded_nats.start()
    c.bus = bus = await JetStreamBus.open(nats_url)
    c.relay = relay = OutboxRelay(store, bus)
    relay.start()
    # the transcript the API and the reports read: in Redis for every node, else in this process
    c.service = service = InterviewService(store, on_commit=relay.notify,
                                           transcripts=c.shared if c.shared is not None else MemoryTranscripts())
    c.analysis = build_analysis(s, service, store, c.metrics)
    await c.analysis.resume()
    stt = await asyncio.to_thread(build_stt, s)
    c.scheduler = scheduler = SttScheduler(stt, workers=s.stt_workers, partial_share=s.partial_share,
                                           hurry=s.stt_hurry)
    c.metrics.bind_stt(queue_depth=lambda: float(scheduler.queue_depth), stats=lambda: scheduler.stats)
    stream_config = StreamConfig(vad=s.vad_mode, partial_interval_s=s.partial_interval_s,
                                 end_silence_ms=s.end_silence_ms, revise=s.stt_revise,
                                 semantic_turns=s.semantic_turns, turn_complete_ms=s.turn_complete_ms,
                                 turn_incomplete_ms=s.turn_incomplete_ms, turn_audio_end=s.turn_audio_end,
                                 speculate_after_ms=s.speculate_after_ms,
                                 crosstalk_guard=s.crosstalk_guard, bleed_suppression=s.bleed_suppression,
                                 await_revisions=False)  # leaving or shutting down does not wait for them

    c.turn_audio = turn_audio = (await asyncio.to_thread(smart_turn.load, s.turn_audio_model)
                                 if s.semantic_turns else None)  # fmt: skip

    def stream_factory(speaker: Speaker, emit: Callable[[StreamEvent], None], in_rate: int, channels: int,
                       conversation: Conversation) -> ParticipantStream:
        # created on the participant's first audio frame: emitted_at_s is monotonic time since then, on the
        # same axis as the stream times of the events (speech end -> emitted = emitted_at_s - end_s)
        started = time.monotonic()
        return ParticipantStream(speaker, scheduler, emit, in_rate=in_rate, channels=channels,
                                 config=stream_config, clock=lambda: time.monotonic() - started,
                                 conversation=conversation, turn_audio=turn_audio)

    guidance = None
    if s.guidance:
        try:
            guidance = await asyncio.to_thread(build_guidance, s, service, c.accounts_store)
        except (ValueError, OSError) as exc:  # an aid, not the service: run without it and say so once
            log.error("live guidance disabled: %s", exc)
    journal_key = store.keyring.master.journal_key() if store.keyring is not None else None
    c.registry = registry = RoomRegistry(stream_factory=stream_factory, metrics=c.metrics,
                                         record_segment=service.record_segment,
                                         record_revision=service.record_revision,
                                         last_seq=service.last_segment_seq,
                                         stored_finals=lambda iid: stored_finals(store, iid),
                                         consent=store.consent_given, resume_grace_s=s.resume_grace_s,
                                         guidance_factory=guidance, record_guidance=service.record_guidance,
                                         # finals sent but not stored yet survive a killed process: in the
                                         # stream every node reads, in DATA_DIR while NATS does not answer
                                         journal=SegmentJournal(s.data_dir / "segments.journal", journal_key),
                                         shared_journal=SharedJournal(bus, journal_key, metrics=c.metrics),
                                         store_delay_s=s.segment_store_delay_s,
                                         tone=partial(org_tone, c.accounts_store, s.jurisdiction),
                                         shared_backlog=c.shared,
                                         vocabulary=(partial(interview_vocabulary, service, s.vocabulary_max_terms)
                                                     if s.vocabulary else None))
    registry.start()
    c.call = call = CallHub(c.metrics, IceConfig(s.ice_servers, c.secrets.turn_secret, s.turn_ttl_s))
    if c.audit_log is not None:
        registry.on_alert = partial(audit_alert, c.audit_log)
    # Rooms placed across nodes (NATS KV): this node's address, as other nodes redirect WHIP clients to it
    node_url = s.public_url or c.node_url or ""
    c.placement = placement = Placement(bus, Owner(s.node_id or node_url or f"pid-{os.getpid()}", node_url),
                                        live=lambda iid: iid in registry.rooms, ttl_s=s.placement_ttl_s)

    trimming = c.trims

    def membership_changed(room: Room) -> None:
        call.room_changed(room.interview_id, sum(p.claims.role == "observer" for p in room.participants.values()))
        if not room.participants:
            placement.room_closed(room.interview_id)
            if s.malloc_trim and trimming:  # one at a time: rooms closing together share a trim
                c.trim_again = True
            elif s.malloc_trim:
                task = asyncio.create_task(_trim_heap(c), name="malloc_trim")
                trimming.add(task)
                task.add_done_callback(trimming.discard)

    registry.on_membership = membership_changed
    # The server's own connections need no TURN (it is the reachable end); the pages get TURN from the call.
    c.whip = whip = WhipIngest(registry, signer, lambda iid: interview_status(service, iid), c.metrics,
                               ice_servers=[RTCIceServer(urls=url) for url in s.ice_servers
                                            if url.startswith("stun:")],
                               call=call, audit=audit, limits=limits,
                               max_peer_connections=s.max_peer_connections, max_rooms_per_org=s.max_rooms_per_org,
                               placement=placement, public_url=s.public_url)
    placement.on_lost = whip.move_room
    placement.start()
    c.journal_sweep = asyncio.create_task(_journal_sweep_loop(registry, placement), name="journal-sweep")
    c.receipts = receipts = await asyncio.to_thread(ReceiptSigner.load_or_create, s.data_dir / "receipt_key.pem")
    shared = c.shared

    async def end_sessions(interview_id: str) -> int:
        ended = await whip.end_interview(interview_id)
        # every token of the interview revoked: a room another node holds ends there too (within a second with
        # Redis, at its next store read without), and nobody re-joins it meanwhile
        await revocations.revoke(interview_id, None, signer.expiry_bound())
        if shared is not None:  # the shared backlog holds transcript text too
            await shared.forget(interview_id)
        return ended

    c.privacy = privacy = Privacy(store, service, receipts, end_sessions=end_sessions,
                                  retention_days=s.retention_days)
    c.retention = asyncio.create_task(_retention_loop(privacy), name="retention")


async def _trim_heap(c: Components) -> None:
    """After a room closed: what its streams, peer connections and frames used is free but glibc keeps it in its
    arenas (one per thread that allocated, `MALLOC_ARENAS`); `malloc_trim(0)` hands it back (README "Soak").
    Rooms that close meanwhile get one more trim: what they free after this one has passed their arena stays."""
    from adapters.memory import trim

    while True:
        c.trim_again = False
        await asyncio.sleep(1.0)  # the room's last objects go when the leave that closed it returns
        await asyncio.to_thread(trim)
        c.metrics.malloc_trims.inc()
        if not c.trim_again:
            return


def build_analysis(s: Settings, service: InterviewService, store: MongoStore, metrics: Metrics) -> AnalysisJobs:
    """The scorecard jobs: the providers ANALYSIS_PROVIDERS names (each with its SDK, timeout, retries and circuit
    breaker) beside the local heuristic analyser, jobs kept in the `analyses` collection."""
    from adapters.analysis_jobs import AnalysisJobs, AnalysisProvider, MongoAnalysisRecords
    from adapters.analysis_providers import (
        Breakers,
        Resilience,
        anthropic_provider,
        huggingface_provider,
        openai_provider,
    )

    resilience = Resilience(timeout_s=s.analysis_timeout_s)
    breakers = Breakers(resilience.breaker_threshold, resilience.breaker_ttl_s)
    providers: list[AnalysisProvider] = []
    for name in s.analysis_providers:
        if name == "openai":
            providers.append(openai_provider(s.openai_base_url, s.openai_api_key, s.openai_analysis_model,
                                             resilience, breakers))
        elif name == "anthropic":
            providers.append(anthropic_provider(s.anthropic_base_url, s.anthropic_api_key, s.anthropic_model,
                                                resilience, breakers))
        else:
            providers.append(huggingface_provider(s.hf_base_url, s.hf_token, s.hf_model, resilience, breakers))

    def rejected(provider: str, n: int) -> None:
        metrics.evidence_rejected.labels(provider=provider).inc(n)

    return AnalysisJobs(service, MongoAnalysisRecords(store.db["analyses"], store), providers, on_rejected=rejected,
                        on_run=lambda provider, status: metrics.analysis_runs.labels(provider, status).inc(),
                        jurisdiction=s.jurisdiction)
def build_limits(s: Settings) -> RateLimits:
    from adapters.rate_limits import RateLimits, Rates

    return RateLimits(Rates(login_account=s.login_limit_account, login_address=s.login_limit_address,
                            token_mint=s.token_mint_limit, whip_join=s.whip_join_limit, api_key=s.api_key_limit),
                      s.redis_url)


# the shared segment journal's sweep: entries of a node that died are stored within this after its placement aged out
JOURNAL_SWEEP_S = 30.0
SWEEP_STOP_S = 5.0  # teardown's wait for the cancelled sweep (it ends at its next await; never wait on the bus)
RETENTION_EVERY_S = 3600.0  # retention is counted in days: an hourly pass erases within the hour of expiry


async def _journal_sweep_loop(registry: RoomRegistry, placement: Placement) -> None:
    """Every JOURNAL_SWEEP_S from start: the shared journal's entries of interviews no node holds are stored (their
    node died and nobody re-joined the room; at start, this node's own before a restart), and those of rooms that opened
    here while the journal could not be read."""
    from adapters.bus import BusUnavailable

    while True:
        try:
            await registry.sweep_journal(placement.held_elsewhere)
        except BusUnavailable:
            pass  # logged by the journal; the next pass tries again
        except Exception:
            log.exception("shared segment journal sweep failed; trying again in %.0f s", JOURNAL_SWEEP_S)
        await asyncio.sleep(JOURNAL_SWEEP_S)


async def _retention_loop(privacy: Privacy) -> None:
    """The retention job, hourly from a minute after start; a failed pass is logged and tried next time."""
    await asyncio.sleep(60.0)
    while True:
        try:
            await privacy.retention()
        except Exception:
            log.exception("retention pass failed; trying again in %.0f s", RETENTION_EVERY_S)
        await asyncio.sleep(RETENTION_EVERY_S)


def audit_alert(audit: AuditSink, interview_id: str, org_id: str, alert: ProtectedTopicAlert) -> None:
    """A protected-topic alert in the interview's organisation's audit trail: who asked, which segment, the topic
    (not the words)."""
    from adapters.audit import AuditEntry

    audit.record(AuditEntry(actor_type="participant", actor_id=alert.participant_id, role="interviewer",
                            org_id=org_id, action="guidance.protected_topic", resource_type="interview",
                            resource_id=interview_id, outcome="ok", address="", user_agent="",
                            at=datetime.now(UTC), detail={"seq": alert.seq, "topic": alert.topic,
                                                          "score": round(alert.score, 3)}))


def build_guidance(s: Settings, service: InterviewService, accounts: AccountsStore | None = None) -> GuidanceFactory:
    """Loads the sentence embedder and the protected-topic detector once (blocking: call in a thread); each room's
    `Guidance` gets the interview's questions as its guide, and the detector of its organisation's jurisdiction
    (`GET/PATCH /api/organisation`; `JURISDICTION` for one that never chose)."""
    import copy

    from adapters.embeddings_onnx import OnnxSentenceEmbedder
    from domain.analysis import OrgPolicy
    from domain.model import DEFAULT_ORG
    from pipeline.guidance import Guidance, GuideItem, Jurisdiction, default_detector

    embedder = OnnxSentenceEmbedder(threads=1)
    # NYC (like many US states) bans salary-history questions; the EU and "none" are not checked for it
    detector = default_detector(embedder, "none")
    ours: dict[str, Jurisdiction] = {"eu": "eu", "us-nyc": "us", "none": "none"}
    detectors = {}  # organisation jurisdiction -> the detector judging by it (the examples' vectors are shared)
    for name, jurisdiction in ours.items():
        detectors[name] = copy.copy(detector)
        detectors[name].jurisdiction = jurisdiction

    async def for_interview(interview_id: str) -> Guidance:
        doc = await service.get_interview(interview_id, with_segments=False)
        org = await accounts.organisation(doc.get("orgId") or DEFAULT_ORG) if accounts is not None else None
        policy = OrgPolicy.from_dict(org or {}, s.jurisdiction)
        guide = [GuideItem(q["questionId"], q["text"], q.get("category", ""), q.get("budgetS"))
                 for q in doc.get("questions", [])]
        return await asyncio.to_thread(Guidance, embedder, detectors.get(policy.jurisdiction, detectors["eu"]), guide)

    return for_interview


async def org_tone(accounts: AccountsStore | None, default_jurisdiction: str, org_id: str) -> bool:
    """Whether an organisation's live rooms show the tone of words (its `toneEnabled`, else off in eu)."""
    from domain.analysis import OrgPolicy

    doc = await accounts.organisation(org_id) if accounts is not None else None
    return OrgPolicy.from_dict(doc or {}, default_jurisdiction).tone


async def interview_vocabulary(service: InterviewService, max_terms: int, interview_id: str) -> tuple[str, ...]:
    """The terms an interview's decodes are told (`pipeline.vocabulary.interview_terms`): its job's skills and
    description, its questions, and the candidate's CV skills, opened here, when the room opens, and kept only in
    the room's memory (never logged)."""
    from domain.model import NotFound
    from pipeline.vocabulary import interview_terms

    doc = await service.get_interview(interview_id, with_segments=False)
    job = doc.get("job") or {}
    questions = doc.get("questions") or []
    cv: list[str] = []
    try:
        candidate = await service.get_candidate(doc["candidateId"])
        cv = [*(candidate.get("skills") or []), *((candidate.get("resume") or {}).get("skills") or [])]
    except NotFound:  # an interview may name a candidate who has no record (yet)
        pass
    return interview_terms(job_skills=job.get("skills") or [], candidate_skills=cv,
                           expected_keywords=[k for q in questions for k in q.get("expectedKeywords") or []],
                           texts=[job.get("description") or "", *(q.get("text", "") for q in questions)],
                           max_terms=max_terms)


async def interview_status(service: InterviewService, interview_id: str) -> str | None:
    from domain.model import NotFound

    try:
        doc = await service.get_interview(interview_id, with_segments=False)
    except NotFound:
        return None
    return str(doc.get("status"))


async def stored_finals(store: MongoStore, interview_id: str) -> list[str]:
    """Stored segments in the wire form the data channel sent them in, one message each: `segment.final`, or for a
    revised one its last `segment.revised` (with `revision`), carrying the live final's text as `originalText`
    (the page shows it as what the revision replaced)."""
    from domain.events import to_json

    return [to_json(s) for s in await store.list_segments(interview_id)]


async def _teardown(c: Components) -> None:
    """Reverse of `_build`, draining first. Each step runs even if an earlier one failed."""
    c.ready = False
    steps: list[tuple[str, Callable[[], Any]]] = []
    for trim in list(c.trims):  # a trim waiting for its room's memory to be freed: no longer worth it
        trim.cancel()
    if c.retention is not None:
        retention = c.retention
        retention.cancel()
        steps.append(("stop the retention job", lambda: asyncio.gather(retention, return_exceptions=True)))
    if c.journal_sweep is not None:
        # cancelled at once: a replay it started runs on (its entries are queued before the registry's writer
        # drains, see RoomRegistry.aclose), only the sweep's wait for it ends
        sweep = c.journal_sweep
        sweep.cancel()
        steps.append(("stop the journal sweep", lambda: asyncio.wait({sweep}, timeout=SWEEP_STOP_S)))
    if c.placement is not None:
        placement = c.placement
        placement.drain()  # rooms keep their placement until their finals are stored
    if c.whip is not None:
        steps.append(("stop reading audio", c.whip.aclose))
    if c.registry is not None:
        steps.append(("drain streams and persist finals", c.registry.aclose))
    if c.placement is not None:
        # participants whose connections close next re-POST and land on another node
        steps.append(("release room placements", c.placement.release_all))
    if c.whip is not None:
        steps.append(("close peer connections", c.whip.close_all))
    if c.turn_audio is not None:
        turn_audio = c.turn_audio
        steps.append(("stop the end-of-turn model", lambda: asyncio.to_thread(turn_audio.close)))
    if c.scheduler is not None:
        steps.append(("stop speech-to-text", c.scheduler.aclose))
        close_stt = getattr(c.scheduler.stt, "close", None)  # the engines with processes or clients to close
        if callable(close_stt):
            steps.append(("stop speech-to-text processes", lambda: asyncio.to_thread(close_stt)))
    if c.analysis is not None:
        steps.append(("stop analysis jobs (resumed on the next start)", c.analysis.aclose))
    if c.relay is not None:
        relay = c.relay
        steps.append(("flush outbox", lambda: _flush_relay(relay)))
    if c.bus is not None:
        steps.append(("close bus", c.bus.close))
    if c.embedded_nats is not None:
        steps.append(("stop embedded NATS", c.embedded_nats.stop))
    if c.audit_log is not None:
        steps.append(("flush audit trail", c.audit_log.aclose))
    if c.revocations is not None:
        steps.append(("stop reloading revocations", c.revocations.aclose))
    if c.limits is not None:
        steps.append(("close rate limit storage", c.limits.aclose))
    if c.shared is not None:
        steps.append(("write the last shared backlog entries, close Redis", c.shared.aclose))
    if c.store is not None:
        steps.append(("close store", c.store.close))
    if c.embedded is not None:
        steps.append(("stop embedded MongoDB", c.embedded.stop))
    for what, step in steps:
        t0 = time.perf_counter()
        try:
            await step()
        except Exception:
            log.exception("shutdown step failed: %s", what)
        log.debug("shutdown: %s took %.2fs", what, time.perf_counter() - t0)


async def _flush_relay(relay: OutboxRelay) -> None:
    relay.notify()
    await relay.aclose()


# uvicorn's limits (uvicorn.Config options): idle keep-alive connections close after 5 s; past 1000 connections or
# requests in flight new requests get 503 at once; a request line and headers above 16 KiB are refused (400).
UVICORN_LIMITS: dict[str, Any] = {"timeout_keep_alive": 5, "limit_concurrency": 1000,
                                  "h11_max_incomplete_event_size": 16 * 1024}


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """`uvicorn.Config` options: the limits above, and uvicorn's h11 protocol with the header timeout
    (`HEADER_TIMEOUT_S`), which uvicorn lacks."""
    from adapters.http_edge import header_timeout_protocol

    return {**UVICORN_LIMITS, "http": header_timeout_protocol(settings.header_timeout_s)}


def create_app(settings: Settings, *, announce: Callable[[Components], None] | None = None,
               node_url: str | None = None) -> Any:
    """The ASGI app. Nothing heavy happens here; the lifespan builds the service."""
    from starlette.applications import Starlette

    from adapters.metrics import Metrics
    from adapters.pages import health_routes, page_routes
    from adapters.tokens import JoinClaims

    metrics = Metrics()

    # Both read the components the lifespan puts on `app` (bound below) once it has built them.
    async def readiness() -> tuple[bool, dict[str, bool]]:
        c: Components = app.state.components
        checks: dict[str, bool] = {"lifespan": c.ready}
        try:
            checks["store"] = c.store is not None and bool(await asyncio.wait_for(c.store.ping(), 2.0))
        except Exception as exc:
            checks["store"] = False
            log.warning("readiness: store ping failed: %s", exc)
        # Booleans only: these endpoints are unauthenticated, so error text (hosts, driver messages) stays in the log.
        checks["outbox"] = c.relay is not None and c.relay.healthy
        checks["audit"] = c.audit_log is None or bool(c.audit_log.status()["running"])
        return bool(checks["lifespan"] and checks["store"]), checks

    def verify_token(token: str) -> JoinClaims:
        return app.state.components.signer.verify(token)

    base_routes = [*health_routes(readiness, metrics, metrics_token=settings.metrics_token),
                   *page_routes(verify_token)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from adapters.crypto import MasterKeyRefused
        from adapters.http_api import Api, api_routes, keys_route

        c = Components(settings=settings, secrets=resolve_secrets(settings), metrics=metrics, node_url=node_url)
        app.state.components = c
        t0 = time.perf_counter()
        try:
            try:
                await _build(c)
            except MasterKeyRefused as exc:
                log.critical("refusing to start: %s", exc)
                raise
            # built by _build
            assert c.signer is not None and c.service is not None and c.whip is not None
            assert c.accounts is not None and c.limits is not None and c.audit is not None
            assert c.privacy is not None and c.receipts is not None and c.registry is not None
            api = Api(c.service, c.accounts, c.signer, c.limits, metrics, c.audit, public_url=settings.public_url,
                      link_hosts=settings.trusted_hosts(),
                      max_body_bytes=settings.max_body_bytes, analysis=c.analysis, privacy=c.privacy,
                      on_consent=c.registry.set_consent, jurisdiction=settings.jurisdiction)
            app.router.routes[:] = [*api_routes(api), keys_route(c.receipts), *c.whip.routes(), *base_routes]
            c.ready = True
            log.info("service ready in %.1fs (store: %s, bus: %s, stt: %s)", time.perf_counter() - t0,
                     "embedded" if c.embedded else "external", "external" if settings.nats_url else "embedded",
                     settings.stt_engine)
            if announce is not None:
                announce(c)
            yield
        finally:
            log.info("shutting down: draining streams")
            await _teardown(c)
            log.info("shutdown complete")

    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from adapters.http_api import exception_handlers
    from adapters.http_edge import BodyTimeout

    # Starlette compares IPv6 hosts with their brackets, as they appear in a Host header.
    hosts = [f"[{h}]" if ":" in h else h for h in settings.trusted_hosts()]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False),
                  Middleware(BodyTimeout, timeout_s=settings.body_timeout_s)]
    app = Starlette(routes=list(base_routes), lifespan=lifespan, exception_handlers=exception_handlers,
                    middleware=middleware)
    if settings.tls_cert_file is not None:
        from adapters.pages import HstsMiddleware

        app.add_middleware(HstsMiddleware)
    return app


# ---- command line ------------------------------------------------------------------------------------------
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="interview-worker: live interview rooms (WebRTC/WHIP), streaming transcription and "
                    "text analytics. Configured by environment variables:",
        epilog="Commands: " + ", ".join(COMMANDS) + " (each with --help)\n\n"
               "Environment variables (default, meaning):\n" + Settings.help_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="overrides HOST")
    parser.add_argument("--port", type=int, help="overrides PORT")
    parser.set_defaults(run=serve)
    # Each command is `run(settings, args) -> exit status`; without one, the service runs.
    commands = parser.add_subparsers(title="commands (default: serve)", metavar="COMMAND")
    commands.add_parser("serve", help="run the service").set_defaults(run=serve)
    verify = commands.add_parser("verify-audit", help="check the audit trail's hash chains in the configured store "
                                 "(one line; exit 0 intact, 1 tampered, 2 store unreachable)")
    verify.add_argument("--org", help="check one organisation's chain (default: every chain)")
    verify.set_defaults(run=verify_audit)
    admin = commands.add_parser("create-admin", help="create an admin user (password read from standard input, "
                                "one line); prints the user id. Embedded mode: while the server is stopped")
    admin.add_argument("email")
    admin.add_argument("--org", default="default", help="organisation name (created if missing; default: "
                       "the default organisation)")
    admin.set_defaults(run=create_admin_command)
    commands.add_parser("rotate-jwt-key", help="add a new access-token signing key to DATA_DIR/jwt_keys.json; "
                        "tokens signed with older keys stay valid until they expire").set_defaults(run=rotate_jwt_key)
    return parser.parse_args(argv)


async def create_admin(settings: Settings, email: str, org: str, password: str) -> str:
    """Creates an admin user in organisation `org` and returns its id (the store is started if embedded)."""
    from adapters.accounts_store import AccountsStore
    from adapters.auth import AccessTokens, Accounts, KeyRing
    from adapters.mongo import EmbeddedMongo, MongoStore
    from adapters.tokens import TokenSigner

    embedded = EmbeddedMongo(settings.data_dir) if settings.mongodb_url is None else None
    url = settings.mongodb_url or await embedded.start()  # type: ignore[union-attr]  # set when url is None
    try:
        store = await MongoStore.connect(url, db_name=settings.mongodb_db)
        try:
            accounts_store = AccountsStore(store.db)
            await accounts_store.create_indexes()
            secrets_ = resolve_secrets(settings)
            accounts = Accounts(accounts_store, AccessTokens(KeyRing(settings.data_dir / "jwt_keys.json")),
                                TokenSigner(secrets_.token_secret), build_limits(settings))
            try:
                user = await accounts.create_admin(email, org, password)
            finally:
                await accounts.limits.aclose()
            return user.user_id
        finally:
            await store.close()
    finally:
        if embedded is not None:
            await embedded.stop()


# ---- maintenance commands: `python server.py <command> ...` (each parses its own arguments) --------------------
@contextlib.asynccontextmanager
async def _offline_store(settings: Settings) -> AsyncIterator[MongoStore]:
    """The store with its key ring, for a command run while the server is stopped (embedded: its data dir is
    locked while a server runs, so the command refuses to run beside one)."""
    from adapters.mongo import EmbeddedMongo, MongoStore

    embedded = None
    url = settings.mongodb_url
    if url is None:
        embedded = EmbeddedMongo(settings.data_dir)
        url = await embedded.start()
    try:
        store = await MongoStore.connect(url, db_name=settings.mongodb_db, key_file=settings.master_key_path)
        try:
            yield store
        finally:
            await store.close()
    finally:
        if embedded is not None:
            await embedded.stop()


def rotate_jwt_key(settings: Settings, args: argparse.Namespace) -> int:
    """`server.py rotate-jwt-key`: a new signing key; tokens signed with older ones verify until they expire."""
    from adapters.auth import KeyRing

    kid = KeyRing.rotate(settings.data_dir / "jwt_keys.json")
    print(f"new signing key {kid} in {settings.data_dir / 'jwt_keys.json'}")
    return 0


def create_admin_command(settings: Settings, args: argparse.Namespace) -> int:
    """`server.py create-admin EMAIL --org NAME`: the password is one line of standard input."""
    from domain.model import DomainError

    password = sys.stdin.readline().rstrip("\r\n")
    try:
        print(asyncio.run(create_admin(settings, args.email, args.org, password)))
    except DomainError as exc:
        print(f"server.py create-admin: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # the embedded store is locked by a running server
        print(f"server.py create-admin: {exc}", file=sys.stderr)
        return 1
    return 0


def _command_settings(prog: str) -> Settings | None:
    from adapters.logs import configure_logging

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"{prog}: bad setting: {exc}", file=sys.stderr)
        return None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def rotate_master_key(argv: list[str]) -> int:
    """A new master key in MASTER_KEY_FILE; every data key re-wrapped under it (the data is not touched)."""
    from adapters.crypto import MasterKeyRefused

    argparse.ArgumentParser(prog="server.py rotate-master-key", description=rotate_master_key.__doc__).parse_args(argv)
    settings = _command_settings("rotate-master-key")
    if settings is None:
        return 2

    async def run() -> tuple[str, int]:
        async with _offline_store(settings) as store:
            assert store.keyring is not None
            return await store.keyring.rotate_master_key()

    try:
        kid, count = asyncio.run(run())
    except (MasterKeyRefused, RuntimeError) as exc:
        print(f"rotate-master-key: {exc}", file=sys.stderr)
        return 1
    print(f"master key rotated: now {kid}; {count} data keys re-wrapped (back up {settings.master_key_path} now)")
    return 0


def verify_receipt_command(argv: list[str]) -> int:
    """Exit 0 when FILE holds a receipt ({"receipt", "signature"}) signed by one of the service's keys, else 1."""
    import httpx

    from adapters.crypto import ReceiptSigner, verify_receipt

    parser = argparse.ArgumentParser(prog="server.py verify-receipt", description=verify_receipt_command.__doc__)
    parser.add_argument("file", type=Path, help="the receipt JSON")
    parser.add_argument("--keys", help="a JWK set: a file, or a URL such as "
                        "https://host/.well-known/interview-worker-keys (default: DATA_DIR's receipt key)")
    args = parser.parse_args(argv)
    try:
        signed = json.loads(args.file.read_text())
        if args.keys and args.keys.startswith(("http://", "https://")):
            keys = httpx.get(args.keys, timeout=10).raise_for_status().json()["keys"]
        elif args.keys:
            keys = json.loads(Path(args.keys).read_text())["keys"]
        else:
            settings = Settings.from_env()
            key_file = settings.data_dir / "receipt_key.pem"
            if not key_file.exists():
                print(f"verify-receipt: no receipt key in {key_file}: give --keys", file=sys.stderr)
                return 1
            keys = [ReceiptSigner.load_or_create(key_file).jwk()]
    except (OSError, ValueError, KeyError, TypeError, httpx.HTTPError) as exc:
        print(f"verify-receipt: {exc}", file=sys.stderr)
        return 1
    if verify_receipt(signed, keys):
        receipt = signed["receipt"]
        print(f"valid: {receipt.get('what')} of candidate {receipt.get('candidateId')} at {receipt.get('at')} "
              f"by {receipt.get('by')} (key {receipt.get('kid')})")
        return 0
    print("INVALID: the signature does not match the receipt (or no known key signed it)", file=sys.stderr)
    return 1


def retention_command(argv: list[str]) -> int:
    """Erase what is older than RETENTION_DAYS after its interview closed, and print the counts."""
    from adapters.crypto import MasterKeyRefused, ReceiptSigner
    from adapters.privacy import Privacy
    from domain.commands import InterviewService

    parser = argparse.ArgumentParser(prog="server.py retention", description=retention_command.__doc__)
    parser.add_argument("--dry-run", action="store_true", help="count what would be erased; change nothing")
    args = parser.parse_args(argv)
    settings = _command_settings("retention")
    if settings is None:
        return 2

    async def run() -> dict[str, Any]:
        async with _offline_store(settings) as store:
            signer = ReceiptSigner.load_or_create(settings.data_dir / "receipt_key.pem")
            privacy = Privacy(store, InterviewService(store), signer, retention_days=settings.retention_days)
            return await privacy.retention(dry_run=args.dry_run)

    try:
        report = asyncio.run(run())
    except (MasterKeyRefused, RuntimeError) as exc:
        print(f"retention: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    return 0


def stt_worker_command(argv: list[str]) -> int:
    """Decode speech for the servers on NATS_URL that run with STT_ENGINE=nats: one live decode (STT_MODEL on
    STT_CPU_THREADS threads) and one revision (REVISION_MODEL, at nice 19) at a time (run one worker per core, on
    any number of machines)."""
    from adapters.stt_nats import run_worker

    parser = argparse.ArgumentParser(prog="server.py stt-worker", description=stt_worker_command.__doc__)
    parser.add_argument("--id", help="this worker's name in logs and heartbeats (default: host-pid)")
    parser.add_argument("--revisions", choices=("nice", "off", "only"), default="nice",
                        help="nice: revisions too, in a process of their own at nice 19, beside the live decodes "
                             "(default); off: live decodes only; only: revisions only, the whole worker at nice 19")
    args = parser.parse_args(argv)
    settings = _command_settings("stt-worker")
    if settings is None:
        return 2
    if not settings.nats_url:
        print("stt-worker: set NATS_URL (the NATS of the servers this worker decodes for)", file=sys.stderr)
        return 2
    from adapters.stt_whisper import revision_model_dir

    revision_model = None
    if args.revisions != "off":  # a worker that never revises does not need the revision model
        try:
            revision_model = revision_model_dir(settings.revision_model, settings.data_dir / "models",
                                                settings.stt_model)
        except ValueError as exc:
            print(f"stt-worker: REVISION_MODEL: {exc}", file=sys.stderr)
            return 2
    return run_worker(settings.nats_url, settings.stt_model, cpu_threads=settings.stt_cpu_threads, worker_id=args.id,
                      revisions=args.revisions, revision_model=revision_model, beam_size=settings.stt_beam_size)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "rotate-master-key": rotate_master_key,
    "verify-receipt": verify_receipt_command,
    "retention": retention_command,
    "stt-worker": stt_worker_command,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    args = _parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"server.py: bad setting: {exc}", file=sys.stderr)
        return 2
    run: Callable[[Settings, argparse.Namespace], int] = args.run
    return run(settings, args)


def verify_audit(settings: Settings, args: argparse.Namespace) -> int:
    """`server.py verify-audit`: the chains of MONGODB_URL, or of the embedded store under DATA_DIR (the running
    server's nx-27017 if there is one, else one started for the check)."""
    from adapters.audit import AuditLog
    from adapters.logs import configure_logging
    from adapters.mongo import EmbeddedMongo, MongoStore
    from domain.model import Unavailable

    configure_logging(settings.log_level, settings.log_format)

    async def check() -> int:
        embedded: EmbeddedMongo | None = None
        url = settings.mongodb_url
        if url is None:
            embedded = EmbeddedMongo(settings.data_dir)
            url = embedded.running_url()
            if url is None:
                url = await embedded.start()
            else:
                embedded = None  # the running server's: not ours to stop
        try:
            store = await MongoStore.connect(url, db_name=settings.mongodb_db)
            try:
                # a trail an older version kept in the service's database (moved by the server's next start)
                trail_db = store.client[settings.audit_db_name]
                if (await trail_db["audit"].estimated_document_count() == 0
                        and await store.db["audit"].estimated_document_count() > 0):
                    trail_db = store.db
                result = await AuditLog(trail_db).verify(args.org)
            finally:
                await store.close()
        finally:
            if embedded is not None:
                await embedded.stop()
        if result.ok:
            print(f"audit trail intact: {result.reason}")
            return 0
        print(f"audit trail TAMPERED at seq {result.first_bad}: {result.reason} ({result.entries} entries read)")
        return 1

    try:
        return asyncio.run(check())
    except (Unavailable, RuntimeError) as exc:
        print(f"server.py verify-audit: cannot read the audit trail: {exc}", file=sys.stderr)
        return 2


def serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from adapters.logs import configure_logging

    if args.host:
        settings = settings.replace(host=args.host)
    if args.port is not None:
        settings = settings.replace(port=args.port)
    configure_logging(settings.log_level, settings.log_format)
    from adapters.memory import limit_arenas

    limit_arenas(settings.malloc_arenas)  # before uvicorn, aiortc and the executors start their threads
    if settings.memory_debug_dir is not None:  # debugging only: tracemalloc on, `kill -USR2` dumps (README "Soak")
        from adapters.memory import install_debug_dump

        install_debug_dump(settings.memory_debug_dir, settings.memory_debug_frames)
    # Bind first so PORT=0 works and the printed URL is the real one.
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        print(f"server.py: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    shown_host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0", "::", "::1") else settings.host
    scheme = "https" if settings.tls_cert_file else "http"
    url = settings.public_url or f"{scheme}://{shown_host}:{port}"

    def announce(c: Components) -> None:
        print(f"interview-worker ready: {url}", flush=True)
        if c.secrets.admin_key_generated:
            print(f"admin API key: {c.secrets.admin_api_key}  (stored in {settings.data_dir / 'admin_api_key'})",
                  flush=True)
        else:
            print("admin API key: from ADMIN_API_KEY", flush=True)
        if c.secrets.setup_token is not None:
            print(f"first admin: open {url}/app/setup?token={c.secrets.setup_token}  (works once, for 24 h)",
                  flush=True)

    app = create_app(settings, announce=announce, node_url=url)
    tls: dict[str, Any] = {}
    if settings.tls_cert_file is not None:
        tls = {"ssl_certfile": str(settings.tls_cert_file), "ssl_keyfile": str(settings.tls_key_file)}
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10, loop=settings.event_loop, **uvicorn_options(settings), **tls)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once shutdown is complete; by then everything is
    # drained and closed, so let that be a clean exit (status 0) instead of death by the default handler.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
