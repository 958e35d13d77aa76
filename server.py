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
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from settings import Settings

if TYPE_CHECKING:  # the composition root imports its adapters lazily: nothing heavy at import time
    from adapters.metrics import Metrics
    from adapters.mongo import EmbeddedMongo, MongoStore
    from adapters.outbox import EventBus, OutboxRelay
    from adapters.rooms import RoomRegistry
    from adapters.tokens import TokenSigner
    from adapters.webrtc import WhipIngest
    from domain.commands import InterviewService
    from domain.events import Speaker, StreamEvent
    from pipeline.scheduler import SttScheduler

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

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"


def resolve_secrets(settings: Settings) -> Secrets:
    if settings.admin_api_key:
        admin, generated = settings.admin_api_key, False
    else:
        admin, _ = _stored_secret(settings.data_dir / "admin_api_key")
        generated = True
    token = settings.token_secret or _stored_secret(settings.data_dir / "token_secret")[0]
    return Secrets(admin, generated, token.encode())


# ---- application -------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Components:
    """Everything the lifespan built, in build order (teardown runs in reverse, see `_teardown`). A field is None
    until `_build` has made it, so a failed start tears down exactly what exists."""

    settings: Settings
    secrets: Secrets
    metrics: Metrics
    embedded: EmbeddedMongo | None = None
    store: MongoStore | None = None
    service: InterviewService | None = None
    bus: EventBus | None = None
    relay: OutboxRelay | None = None
    scheduler: SttScheduler | None = None
    registry: RoomRegistry | None = None
    whip: WhipIngest | None = None
    signer: TokenSigner | None = None
    ready: bool = False


async def _build(c: Components) -> None:
    from aiortc import RTCIceServer

    from adapters.mongo import EmbeddedMongo, MongoStore
    from adapters.nats_bus import open_bus
    from adapters.outbox import OutboxRelay
    from adapters.rooms import RoomRegistry
    from adapters.stt_engines import build_stt
    from adapters.tokens import TokenSigner
    from adapters.webrtc import WhipIngest
    from domain.commands import InterviewService
    from pipeline.scheduler import SttScheduler
    from pipeline.stream import Conversation, ParticipantStream, StreamConfig

    s = c.settings
    s.data_dir.mkdir(parents=True, exist_ok=True)
    url = s.mongodb_url
    if url is None:
        c.embedded = EmbeddedMongo(s.data_dir)
        url = await c.embedded.start()
    c.store = store = await MongoStore.connect(url, db_name=s.mongodb_db)
    c.bus = bus = await open_bus(s.nats_url)
    c.relay = relay = OutboxRelay(store, bus)
    relay.start()
    c.service = service = InterviewService(store, on_commit=relay.notify)
    stt = await asyncio.to_thread(build_stt, s)
    c.scheduler = scheduler = SttScheduler(stt, workers=s.stt_workers, partial_share=s.partial_share)
    c.metrics.bind_stt(queue_depth=lambda: float(scheduler.queue_depth), stats=lambda: scheduler.stats)
    stream_config = StreamConfig(vad=s.vad_mode, partial_interval_s=s.partial_interval_s,
                                 end_silence_ms=s.end_silence_ms, revise=s.stt_revise,
                                 await_revisions=False)  # leaving or shutting down does not wait for them

    def stream_factory(speaker: Speaker, emit: Callable[[StreamEvent], None], in_rate: int, channels: int,
                       conversation: Conversation) -> ParticipantStream:
        # created on the participant's first audio frame: emitted_at_s is monotonic time since then, on the
        # same axis as the stream times of the events (speech end -> emitted = emitted_at_s - end_s)
        started = time.monotonic()
        return ParticipantStream(speaker, scheduler, emit, in_rate=in_rate, channels=channels,
                                 config=stream_config, clock=lambda: time.monotonic() - started,
                                 conversation=conversation)

    c.registry = registry = RoomRegistry(stream_factory=stream_factory, metrics=c.metrics,
                                         record_segment=service.record_segment,
                                         record_revision=service.record_revision,
                                         last_seq=service.last_segment_seq,
                                         stored_finals=lambda iid: stored_finals(store, iid),
                                         resume_grace_s=s.resume_grace_s)
    registry.start()
    c.signer = signer = TokenSigner(c.secrets.token_secret, ttl_s=s.token_ttl_s)
    c.whip = WhipIngest(registry, signer, lambda iid: interview_status(service, iid), c.metrics,
                        ice_servers=[RTCIceServer(urls=url) for url in s.ice_servers])


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
    if c.whip is not None:
        steps.append(("stop reading audio", c.whip.aclose))
    if c.registry is not None:
        steps.append(("drain streams and persist finals", c.registry.aclose))
    if c.whip is not None:
        steps.append(("close peer connections", c.whip.close_all))
    if c.scheduler is not None:
        steps.append(("stop speech-to-text", c.scheduler.aclose))
        close_stt = getattr(c.scheduler.stt, "close", None)  # the engines with processes or clients to close
        if callable(close_stt):
            steps.append(("stop speech-to-text processes", lambda: asyncio.to_thread(close_stt)))
    if c.relay is not None:
        relay = c.relay
        steps.append(("flush outbox", lambda: _flush_relay(relay)))
    if c.bus is not None:
        steps.append(("close bus", c.bus.close))
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
# Half-sent headers are not bounded by uvicorn: the reverse proxy does that (README, "Hardening").
UVICORN_LIMITS: dict[str, Any] = {"timeout_keep_alive": 5, "limit_concurrency": 1000,
                                  "h11_max_incomplete_event_size": 16 * 1024}


def create_app(settings: Settings, *, announce: Callable[[Components], None] | None = None) -> Any:
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
        return bool(checks["lifespan"] and checks["store"]), checks

    def verify_token(token: str) -> JoinClaims:
        return app.state.components.signer.verify(token)

    base_routes = [*health_routes(readiness, metrics, metrics_token=settings.metrics_token),
                   *page_routes(verify_token)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from adapters.http_api import api_routes, token_route

        c = Components(settings=settings, secrets=resolve_secrets(settings), metrics=metrics)
        app.state.components = c
        t0 = time.perf_counter()
        try:
            await _build(c)
            assert c.signer is not None and c.service is not None and c.whip is not None  # built by _build
            token = token_route(c.signer, c.service, c.secrets.admin_api_key, metrics,
                                public_url=settings.public_url, link_hosts=settings.trusted_hosts())
            app.router.routes[:] = [token, *api_routes(c.service, c.secrets.admin_api_key,
                                                       max_body_bytes=settings.max_body_bytes),
                                    *c.whip.routes(), *base_routes]
            c.ready = True
            log.info("service ready in %.1fs (store: %s, bus: %s, stt: %s)", time.perf_counter() - t0,
                     "embedded" if c.embedded else "external", "nats" if settings.nats_url else "in-process",
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
    return app


# ---- command line ------------------------------------------------------------------------------------------
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="interview-worker: live interview rooms (WebRTC/WHIP), streaming transcription and "
                    "text analytics. Configured by environment variables:",
        epilog="Environment variables (default, meaning):\n" + Settings.help_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="overrides HOST")
    parser.add_argument("--port", type=int, help="overrides PORT")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from adapters.logs import configure_logging

    args = _parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"server.py: bad setting: {exc}", file=sys.stderr)
        return 2
    if args.host:
        settings = settings.replace(host=args.host)
    if args.port is not None:
        settings = settings.replace(port=args.port)
    configure_logging(settings.log_level, settings.log_format)
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
    url = settings.public_url or f"http://{shown_host}:{port}"

    def announce(c: Components) -> None:
        print(f"interview-worker ready: {url}", flush=True)
        if c.secrets.admin_key_generated:
            print(f"admin API key: {c.secrets.admin_api_key}  (stored in {settings.data_dir / 'admin_api_key'})",
                  flush=True)
        else:
            print("admin API key: from ADMIN_API_KEY", flush=True)

    app = create_app(settings, announce=announce)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10, **UVICORN_LIMITS)
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
