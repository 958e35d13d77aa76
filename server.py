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
import datetime as dt
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger("interview_worker")

STATIC_DIR = Path(__file__).resolve().parent / "adapters" / "static"


# ---- settings ----------------------------------------------------------------------------------------------
def _choice(*options: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        v = value.strip().lower()
        if v not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return v

    return parse


def _positive_int(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise ValueError("must be a positive integer")
    return n


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _port(value: str) -> int:
    n = int(value)
    if not 0 <= n <= 65535:
        raise ValueError("must be a port number (0 picks a free one)")
    return n


def _non_negative_float(value: str) -> float:
    x = float(value)
    if not x >= 0:
        raise ValueError("must be a number >= 0")
    return x


def _fraction(value: str) -> float:
    x = float(value)
    if not 0 <= x <= 1:
        raise ValueError("must be a number from 0 to 1")
    return x


def _log_level(value: str) -> str:
    v = value.strip().upper()
    if v not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return v


def _text(value: str) -> str:
    return value.strip()


def _urls(value: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in value.split(",") if u.strip())
    for u in urls:
        if not u.startswith("stun:"):
            raise ValueError(f"{u!r} is not a stun: URL")
    return urls


def _secret(value: str) -> str:
    v = value.strip()
    if len(v) < 16:
        raise ValueError("must be at least 16 characters")
    return v


def _setting(env: str, default: Any, parse: Callable[[str], Any], doc: str, *, secret: bool = False) -> Any:
    return field(default=default, repr=not secret,
                 metadata={"env": env, "parse": parse, "doc": doc, "secret": secret})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, its environment variable, default and meaning (the source of `--help` and the README)."""

    host: str = _setting("HOST", "127.0.0.1", _text, "interface to listen on (0.0.0.0 for all; browsers need "
                         "HTTPS for the microphone except on localhost, so put a TLS proxy in front)")
    port: int = _setting("PORT", 8080, _port, "TCP port (0 = any free port)")
    data_dir: Path = _setting("DATA_DIR", Path("./data"), lambda v: Path(v).expanduser(),
                              "where embedded MongoDB data and generated secrets live")
    public_url: str | None = _setting("PUBLIC_URL", None, lambda v: v.strip().rstrip("/") or None,
                                      "base URL used in join links (default: the URL the request came to)")
    admin_api_key: str | None = _setting("ADMIN_API_KEY", None, _secret, "API key for /api (unset: generated on "
                                         "first start, stored in DATA_DIR/admin_api_key and printed)", secret=True)
    mongodb_url: str | None = _setting("MONGODB_URL", None, _text, "MongoDB URL (unset: embedded nx-27017 under "
                                       "DATA_DIR)", secret=True)
    mongodb_db: str = _setting("MONGODB_DB", "interviews", _text, "database name")
    nats_url: str | None = _setting("NATS_URL", None, _text, "NATS URL with JetStream (unset: in-process bus)",
                                    secret=True)
    token_secret: str | None = _setting("TOKEN_SECRET", None, _secret, "HMAC key for join tokens (unset: "
                                        "generated, stored in DATA_DIR/token_secret)", secret=True)
    token_ttl_s: int = _setting("TOKEN_TTL_S", 4 * 3600, _positive_int, "join token lifetime, seconds")
    stt_engine: str = _setting("STT_ENGINE", "local", _choice("local", "openai"),
                               "speech-to-text: local faster-whisper, or an OpenAI-compatible API")
    stt_model: str | None = _setting("STT_MODEL", None, lambda v: v.strip() or None,
                                     "CTranslate2 Whisper model directory (unset: bundled tiny.en)")
    stt_workers: int = _setting("STT_WORKERS", 2, _positive_int, "parallel transcriptions (one is always kept "
                                "for finals when there are two or more)")
    stt_cpu_threads: int = _setting("STT_CPU_THREADS", 1, _positive_int, "CPU threads per transcription")
    stt_subprocess: bool = _setting("STT_SUBPROCESS", True, _bool, "run local transcriptions in STT_WORKERS "
                                    "child processes (false: threads of the server process, which then contend "
                                    "with the event loop for the GIL)")
    openai_base_url: str | None = _setting("OPENAI_BASE_URL", None, lambda v: v.strip() or None,
                                           "OpenAI-compatible API base URL (STT_ENGINE=openai)")
    openai_api_key: str | None = _setting("OPENAI_API_KEY", None, _text, "API key for STT_ENGINE=openai",
                                          secret=True)
    openai_stt_model: str = _setting("OPENAI_STT_MODEL", "whisper-1", _text, "model name for STT_ENGINE=openai")
    vad_mode: str = _setting("VAD_MODE", "hybrid", _choice("hybrid", "webrtc", "silero"),
                             "voice activity detector of the DSP core")
    partial_interval_s: float = _setting("PARTIAL_INTERVAL_S", 1.0, _non_negative_float,
                                         "seconds between partial transcripts of speech in progress (0 = none)")
    partial_share: float = _setting("PARTIAL_SHARE", 0.15, _fraction, "most of the speech-to-text workers' time "
                                    "partials may take (over 5 s); under load partials thin out, finals never do")
    stt_revise: bool = _setting("STT_REVISE", True, _bool, "decode each final again with the conversation around it "
                                "on spare speech-to-text capacity; a more confident different text goes out as "
                                "segment.revised (local engine only)")
    end_silence_ms: int = _setting("END_SILENCE_MS", 500, _positive_int,
                                   "silence that ends an utterance (lower: faster finals, more splits)")
    ice_servers: tuple[str, ...] = _setting("ICE_SERVERS", (), _urls, "comma-separated stun: URLs for the "
                                            "server's ICE candidates (unset: host candidates only)")
    resume_grace_s: float = _setting("RESUME_GRACE_S", 5.0, _non_negative_float,
                                     "how long a dropped participant can resume its stream")
    max_body_bytes: int = _setting("MAX_BODY_BYTES", 1024 * 1024, _positive_int,
                                   "largest accepted JSON request body (bigger: 413)")
    log_level: str = _setting("LOG_LEVEL", "INFO", _log_level, "DEBUG, INFO, WARNING, ERROR")
    log_format: str = _setting("LOG_FORMAT", "text", _choice("text", "json"), "log lines as text or JSON")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads every setting; raises ValueError naming the variable (never its value if secret)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                shown = "" if f.metadata["secret"] else f" (got {raw!r})"
                raise ValueError(f"{name}: {exc}{shown}") from None
        settings = cls(**values)
        if settings.stt_engine == "openai" and not (settings.openai_base_url or settings.openai_api_key):
            raise ValueError("STT_ENGINE=openai needs OPENAI_API_KEY (api.openai.com) or OPENAI_BASE_URL")
        return settings

    @classmethod
    def help_table(cls) -> str:
        rows = []
        for f in fields(cls):
            default = f.default if f.default not in (None, ()) else "(unset)"
            rows.append(f"  {f.metadata['env']:<20} {str(default):<14} {f.metadata['doc']}")
        return "\n".join(rows)


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


# ---- logging -----------------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # aioice/aiortc log every STUN check and pymongo every heartbeat: never below WARNING.
    for noisy in ("aioice", "aiortc", "pymongo"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[settings.log_level]))


# ---- application -------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Components:
    """Everything the lifespan built, in build order (teardown runs in reverse, see `_teardown`)."""

    settings: Settings
    secrets: Secrets
    metrics: Any
    embedded: Any = None
    store: Any = None
    service: Any = None
    bus: Any = None
    relay: Any = None
    scheduler: Any = None
    registry: Any = None
    whip: Any = None
    signer: Any = None
    ready: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


async def _build(c: Components) -> None:
    from aiortc import RTCIceServer

    from adapters.mongo import EmbeddedMongo, MongoStore
    from adapters.nats_bus import OutboxRelay, open_bus
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
    c.store = await MongoStore.connect(url, db_name=s.mongodb_db)
    c.bus = await open_bus(s.nats_url)
    c.relay = OutboxRelay(c.store, c.bus)
    c.relay.start()
    c.service = InterviewService(c.store, on_commit=c.relay.notify)
    stt = await asyncio.to_thread(build_stt, s)
    c.scheduler = SttScheduler(stt, workers=s.stt_workers, partial_share=s.partial_share)
    c.metrics.bind_stt(queue_depth=lambda: float(c.scheduler.queue_depth), stats=lambda: c.scheduler.stats)
    stream_config = StreamConfig(vad=s.vad_mode, partial_interval_s=s.partial_interval_s,
                                 end_silence_ms=s.end_silence_ms, revise=s.stt_revise,
                                 await_revisions=False)  # leaving or shutting down does not wait for them

    def stream_factory(speaker: Any, emit: Any, in_rate: int, channels: int,
                       conversation: Conversation) -> ParticipantStream:
        # created on the participant's first audio frame: emitted_at_s is monotonic time since then, on the
        # same axis as the stream times of the events (speech end -> emitted = emitted_at_s - end_s)
        started = time.monotonic()
        return ParticipantStream(speaker, c.scheduler, emit, in_rate=in_rate, channels=channels,
                                 config=stream_config, clock=lambda: time.monotonic() - started,
                                 conversation=conversation)

    c.registry = RoomRegistry(stream_factory=stream_factory, metrics=c.metrics,
                              record_segment=c.service.record_segment,
                              record_revision=c.service.record_revision,
                              last_seq=c.service.last_segment_seq,
                              stored_finals=lambda iid: stored_finals(c.store, iid),
                              resume_grace_s=s.resume_grace_s)
    c.registry.start()
    c.signer = TokenSigner(c.secrets.token_secret, ttl_s=s.token_ttl_s)
    c.whip = WhipIngest(c.registry, c.signer, lambda iid: interview_status(c.service, iid), c.metrics,
                        ice_servers=[RTCIceServer(urls=url) for url in s.ice_servers])


async def interview_status(service: Any, interview_id: str) -> str | None:
    from domain.model import NotFound

    try:
        doc = await service.get_interview(interview_id, with_segments=False)
    except NotFound:
        return None
    return str(doc.get("status"))


_SEGMENT_WIRE_FIELDS = ("speaker", "seq", "start_s", "end_s", "text", "words", "confidence", "no_speech_prob",
                        "language", "engine", "model", "hallucination")


async def stored_finals(store: Any, interview_id: str) -> list[str]:
    """Stored segments in the wire form the data channel sent them in, one message each: `segment.final`, or for a
    revised one its last `segment.revised` (with `revision`), carrying the live final's text as `originalText`
    (the page shows it as what the revision replaced)."""
    out = []
    for doc in await store.list_segments(interview_id):
        event = {"type": "segment.final", **{k: doc[k] for k in _SEGMENT_WIRE_FIELDS if k in doc}}
        if doc.get("revision"):
            event.update(type="segment.revised", revision=doc["revision"], originalText=doc.get("originalText", ""))
        out.append(json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str))
    return out


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
        if callable(getattr(c.scheduler.stt, "close", None)):
            steps.append(("stop speech-to-text processes", lambda: asyncio.to_thread(c.scheduler.stt.close)))
    if c.relay is not None:
        steps.append(("flush outbox", lambda: _flush_relay(c.relay)))
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


async def _flush_relay(relay: Any) -> None:
    relay.notify()
    await relay.aclose()


def create_app(settings: Settings, *, announce: Callable[[Components], None] | None = None) -> Any:
    """The ASGI app. Nothing heavy happens here; the lifespan builds the service."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from adapters.metrics import Metrics
    from adapters.tokens import InvalidToken

    metrics = Metrics()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        c: Components = request.app.state.components
        checks: dict[str, Any] = {"lifespan": c.ready}
        try:
            checks["store"] = bool(await asyncio.wait_for(c.store.ping(), 2.0))
        except Exception as exc:
            checks["store"] = False
            log.warning("readiness: store ping failed: %s", exc)
        relay_status = c.relay.status() if c.relay is not None else {}
        checks["outbox"] = relay_status
        ok = checks["lifespan"] and checks["store"]
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks},
                            status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    page_headers = {
        # Nothing is loaded from anywhere else; the join token is in the URL, so never send it as a referrer.
        "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                                   "media-src 'self' blob:; style-src 'self'; script-src 'self'; "
                                   "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": "microphone=(self), camera=()",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }

    def page(name: str, roles: tuple[str, ...]) -> Callable[[Request], Any]:
        async def serve(request: Request) -> Response:
            path = STATIC_DIR / name
            if not path.is_file():
                return JSONResponse({"error": {"code": "not_found", "message": f"{name} is not installed"}},
                                    status_code=404)
            token = request.query_params.get("token")
            if token and roles:
                c: Components = request.app.state.components
                try:
                    claims = c.signer.verify(token)
                except InvalidToken:
                    claims = None  # the page itself explains an invalid or expired link
                if claims is not None and claims.role not in roles:
                    other = "candidate" if claims.role == "candidate" else "interviewer"
                    return JSONResponse({"error": {"code": "wrong_page",
                                                   "message": f"this link is for the {other} page"}},
                                        status_code=403)
            return FileResponse(path, headers=page_headers)

        return serve

    base_routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/", page("index.html", ())),
        Route("/candidate", page("candidate.html", ("candidate",))),
        Route("/interviewer", page("interviewer.html", ("interviewer", "observer"))),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from adapters.http_api import api_routes
        from adapters.webrtc import token_route

        c = Components(settings=settings, secrets=resolve_secrets(settings), metrics=metrics)
        app.state.components = c
        t0 = time.perf_counter()
        try:
            await _build(c)
            token = token_route(c.signer, c.service, c.secrets.admin_api_key, metrics,
                                public_url=settings.public_url)
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

    from adapters.http_api import exception_handlers

    return Starlette(routes=list(base_routes), lifespan=lifespan, exception_handlers=exception_handlers)


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
    import dataclasses

    import uvicorn

    args = _parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"server.py: bad setting: {exc}", file=sys.stderr)
        return 2
    if args.host:
        settings = dataclasses.replace(settings, host=args.host)
    if args.port is not None:
        settings = dataclasses.replace(settings, port=args.port)
    configure_logging(settings)
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
                            timeout_graceful_shutdown=10)
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
