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


def _stun_urls(value: Any) -> Any:
    if isinstance(value, str):
        value = tuple(u.strip() for u in value.split(",") if u.strip())
    for u in value:
        if not str(u).startswith("stun:"):
            raise ValueError(f"{u!r} is not a stun: URL")
    return tuple(value)


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
    admin_api_key: Secret = setting(None, "API key for /api (unset: generated on first start, stored in "
                                    "DATA_DIR/admin_api_key and printed)", secret=True)
    metrics_token: Secret = setting(None, "bearer token /metrics requires (unset: /metrics is open; bind it "
                                    "privately)", secret=True)
    mongodb_url: OptionalText = setting(None, "MongoDB URL (unset: embedded nx-27017 under DATA_DIR)", secret=True)
    mongodb_db: Text = setting("interviews", "database name")
    nats_url: OptionalText = setting(None, "NATS URL with JetStream (unset: in-process bus)", secret=True)
    token_secret: Secret = setting(None, "HMAC key for join tokens (unset: generated, stored in "
                                   "DATA_DIR/token_secret)", secret=True)
    token_ttl_s: PositiveInt = setting(4 * 3600, "join token lifetime, seconds")
    stt_engine: Annotated[Literal["local", "openai"], BeforeValidator(_lower)] = setting(
        "local", "speech-to-text: local faster-whisper, or an OpenAI-compatible API")
    stt_model: OptionalText = setting(None, "CTranslate2 Whisper model directory (unset: bundled tiny.en)")
    stt_workers: PositiveInt = setting(2, "parallel transcriptions (one is always kept for finals when there are "
                                       "two or more)")
    stt_cpu_threads: PositiveInt = setting(1, "CPU threads per transcription")
    stt_subprocess: Flag = setting(True, "run local transcriptions in STT_WORKERS child processes (false: threads "
                                   "of the server process, which then contend with the event loop for the GIL)")
    openai_base_url: OptionalText = setting(None, "OpenAI-compatible API base URL (STT_ENGINE=openai)")
    openai_api_key: OptionalText = setting(None, "API key for STT_ENGINE=openai", secret=True)
    openai_stt_model: Text = setting("whisper-1", "model name for STT_ENGINE=openai")
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
    end_silence_ms: PositiveInt = setting(500, "silence that ends an utterance (lower: faster finals, more splits)")
    ice_servers: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_stun_urls)] = setting(
        (), "comma-separated stun: URLs for the server's ICE candidates (unset: host candidates only)")
    resume_grace_s: NonNegative = setting(5.0, "how long a dropped participant can resume its stream")
    body_timeout_s: Annotated[float, Field(gt=0)] = setting(
        15.0, "seconds a client has to send a request's body once its headers arrived (slower: 408, closed)")
    max_body_bytes: PositiveInt = setting(1024 * 1024, "largest accepted JSON request body (bigger: 413)")
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
        if settings.stt_engine == "openai" and not (settings.openai_base_url or settings.openai_api_key):
            raise ValueError("STT_ENGINE=openai needs OPENAI_API_KEY (api.openai.com) or OPENAI_BASE_URL")
        return settings

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
