"""Join tokens for interview rooms: signed, expiring, revocable JWTs (HS256, PyJWT).

Wire form (the browser pages decode the payload part to show name and role, so it is a contract)::

    header {"alg": "HS256", "typ": "JWT", "kid": "join"} . payload {"iid", "pid", "role", "name", "exp", "iat",
    "jti", "org", "aud": "join"} . signature

The key is TOKEN_SECRET, not the access-token key ring, and `aud` is "join": an access token is never a join token
and a join token never an access token. Expiry is checked against the signer's own clock (tests pass one).
Verification rejects anything it did not issue, and any token `Revocations` holds, with `InvalidToken` carrying a
short loggable reason (never the token itself).

`Revocations` is the revocation list: a join token (by interview and `jti`) or every token of an interview
(cancelled), persisted by the accounts store, cached in memory, reloaded every few seconds (so a revocation
written by another process takes effect here too), and announced to listeners (the WHIP ingest closes the live
session of a revoked token). With a `shared` list (Redis, `adapters.shared_state`), each revocation is written there
too and the list is read from there every `shared_refresh_s` (the store only every `store_refresh_s`); while Redis
does not answer, the store is read every `refresh_s` as without it, and once Redis is back this process writes what
it learned meanwhile there, so revocations made during the outage reach the nodes that read only Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from domain.access import DEFAULT_ORG
from domain.events import ROLES, Speaker

log = logging.getLogger(__name__)

MAX_NAME_LEN = 100
MAX_TOKEN_LEN = 4096
_MIN_SECRET_BYTES = 16
JOIN_AUDIENCE = "join"
JOIN_KID = "join"


class InvalidToken(Exception):
    """The bearer token is missing, malformed, forged, expired or revoked. `reason` is safe to log and return."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True, frozen=True)
class JoinClaims:
    interview_id: str
    participant_id: str
    role: str
    name: str
    expires_at: int  # unix seconds
    token_id: str = ""  # jti
    org_id: str = DEFAULT_ORG

    @property
    def speaker(self) -> Speaker:
        return Speaker(role=self.role, name=self.name, participant_id=self.participant_id)

    def to_payload(self) -> dict[str, Any]:
        return {"iid": self.interview_id, "pid": self.participant_id, "role": self.role, "name": self.name,
                "exp": self.expires_at, "jti": self.token_id, "org": self.org_id}


def validate_name(name: object) -> str:
    """A display name: a non-empty string of at most MAX_NAME_LEN printable characters (raises ValueError)."""
    if not isinstance(name, str):
        raise ValueError("name must be a string")
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ValueError("name must not be empty")
    if len(cleaned) > MAX_NAME_LEN:
        raise ValueError(f"name must be at most {MAX_NAME_LEN} characters")
    if not cleaned.isprintable():
        raise ValueError("name must contain printable characters only")
    return cleaned


def validate_role(role: object) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    return str(role)


class RevocationStore(Protocol):
    """Where revocations persist (adapters.accounts_store.AccountsStore)."""

    async def add_revocation(self, interview_id: str, token_id: str | None, until: float) -> None: ...

    async def list_revocations(self, now: float) -> list[tuple[str, str | None]]: ...


class SharedRevocations(Protocol):
    """The revocation list every node reads fast (adapters.shared_state.RedisState); None/False: unavailable."""

    async def add_revocations(self, entries: list[tuple[str, str | None]], until: float) -> bool: ...

    async def list_revocations(self, now: float) -> list[tuple[str, str | None]] | None: ...


# Called with (interview_id, token_id or None for the whole interview) when a revocation becomes known.
RevocationListener = Callable[[str, str | None], Awaitable[None]]


class Revocations:
    """Revoked join tokens: (interview, jti) pairs and whole interviews, persisted in `store` (None: memory only)."""

    def __init__(self, store: RevocationStore | None = None, *, refresh_s: float = 3.0,
                 clock: Callable[[], float] = time.time, shared: SharedRevocations | None = None,
                 shared_refresh_s: float = 0.5, store_refresh_s: float = 30.0, keep_s: float = 4 * 3600 + 60) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.shared = shared
        self.shared_refresh_s = shared_refresh_s
        self.store_refresh_s = store_refresh_s
        self.keep_s = keep_s  # how long a revocation re-shared after an outage is kept (the longest token lifetime)
        self._shared_ok = True
        self._clock = clock
        self._tokens: set[tuple[str, str]] = set()
        self._interviews: set[str] = set()
        self.listeners: list[RevocationListener] = []
        self._task: asyncio.Task[None] | None = None

    def is_revoked(self, claims: JoinClaims) -> bool:
        return claims.interview_id in self._interviews or (claims.interview_id, claims.token_id) in self._tokens

    async def revoke(self, interview_id: str, token_id: str | None, until: float) -> None:
        """Revoke one token (`token_id`) or every token of an interview (None) until `until` (unix seconds: the
        latest expiry such a token can have). Persisted first, then announced."""
        if self.store is not None:
            await self.store.add_revocation(interview_id, token_id, until)
        if self.shared is not None:
            self._shared_ok = await self.shared.add_revocations([(interview_id, token_id)], until)
        self._add(interview_id, token_id)
        await self._announce(interview_id, token_id)

    def _add(self, interview_id: str, token_id: str | None) -> bool:
        key: Any = interview_id if token_id is None else (interview_id, token_id)
        known = self._interviews if token_id is None else self._tokens
        if key in known:
            return False
        known.add(key)
        return True

    async def _announce(self, interview_id: str, token_id: str | None) -> None:
        for listener in list(self.listeners):
            try:
                await listener(interview_id, token_id)
            except Exception:
                log.exception("revocation listener failed")

    async def load(self) -> None:
        """Reads the persisted list; announces what is new (revoked elsewhere)."""
        if self.store is None:
            return
        await self._apply(await self.store.list_revocations(self._clock()))

    async def _apply(self, entries: list[tuple[str, str | None]]) -> None:
        for interview_id, token_id in entries:
            if self._add(interview_id, token_id):
                await self._announce(interview_id, token_id)

    def known(self) -> list[tuple[str, str | None]]:
        return [(i, None) for i in self._interviews] + [(i, t) for i, t in self._tokens]

    async def load_shared(self) -> bool:
        """Reads the shared list (False: unavailable). Back after an outage: first writes there what this process
        knows, which includes what was revoked (in the store only) meanwhile."""
        if self.shared is None:
            return False
        if not self._shared_ok:
            if not await self.shared.add_revocations(self.known(), self._clock() + self.keep_s):
                return False
            self._shared_ok = True
        entries = await self.shared.list_revocations(self._clock())
        if entries is None:
            self._shared_ok = False
            return False
        await self._apply(entries)
        return True

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        last_store = self._clock()
        while True:
            fast = self.shared is not None and self._shared_ok
            await asyncio.sleep(self.shared_refresh_s if fast else self.refresh_s)
            try:
                shared = await self.load_shared()
                if not shared or self._clock() - last_store >= self.store_refresh_s:
                    last_store = self._clock()
                    await self.load()
            except Exception as exc:  # the store may be down; the cached list still holds
                log.warning("cannot reload the join token revocation list: %s", exc)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class TokenSigner:
    """Issues and verifies join tokens with one HMAC secret. `clock` returns unix seconds (tests pass their own)."""

    def __init__(self, secret: bytes, *, ttl_s: int = 4 * 3600, clock: Callable[[], float] = time.time,
                 revocations: Revocations | None = None) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"token secret must be at least {_MIN_SECRET_BYTES} bytes")
        if ttl_s <= 0:
            raise ValueError("token ttl must be positive")
        self._secret = secret
        self.ttl_s = int(ttl_s)
        self._clock = clock
        self.revocations = revocations or Revocations()

    def expiry_bound(self) -> float:
        """The latest expiry a token issued until now can have: how long a revocation must be kept."""
        return self._clock() + self.ttl_s + 60

    def issue(self, interview_id: str, role: str, name: str, *, participant_id: str | None = None,
              ttl_s: int | None = None, org_id: str = DEFAULT_ORG) -> tuple[str, JoinClaims]:
        if not interview_id:
            raise ValueError("interview id must not be empty")
        now = int(self._clock())
        claims = JoinClaims(
            interview_id=interview_id,
            participant_id=participant_id or "p_" + secrets.token_urlsafe(9),
            role=validate_role(role),
            name=validate_name(name),
            expires_at=now + int(ttl_s if ttl_s is not None else self.ttl_s),
            token_id=secrets.token_urlsafe(12),
            org_id=org_id,
        )
        payload = {**claims.to_payload(), "iat": now, "aud": JOIN_AUDIENCE}
        return jwt.encode(payload, self._secret, algorithm="HS256", headers={"kid": JOIN_KID}), claims

    def verify(self, token: str, *, allow_expired: bool = False) -> JoinClaims:
        """The claims of a token this signer issued and nobody revoked. `allow_expired` serves leaving, never
        joining (and lets a revoked token leave too)."""
        if not token:
            raise InvalidToken("missing token")
        if len(token) > MAX_TOKEN_LEN or token.count(".") != 2:
            raise InvalidToken("malformed token")
        try:
            payload = jwt.decode(token, self._secret, algorithms=["HS256"], audience=JOIN_AUDIENCE,
                                 options={"verify_exp": False, "verify_iat": False,
                                          "require": ["exp", "jti", "iid", "pid", "role", "name"]})
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        try:
            claims = JoinClaims(
                interview_id=_text(payload, "iid"),
                participant_id=_text(payload, "pid"),
                role=validate_role(payload.get("role")),
                name=validate_name(payload.get("name")),
                expires_at=_int(payload, "exp"),
                token_id=_text(payload, "jti"),
                org_id=_text(payload, "org") if "org" in payload else DEFAULT_ORG,
            )
        except ValueError as exc:
            raise InvalidToken("malformed token") from exc
        if allow_expired:
            return claims
        if claims.expires_at <= self._clock():
            raise InvalidToken("token expired")
        if self.revocations.is_revoked(claims):
            raise InvalidToken("token revoked")
        return claims


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(key)
    return value


def _int(payload: dict[str, Any], key: str) -> int:
    value = payload.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(key)
    return value


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header value (raises InvalidToken)."""
    if not authorization:
        raise InvalidToken("missing token")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise InvalidToken("authorization must be 'Bearer <token>'")
    return value.strip()
