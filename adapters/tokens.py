"""Signed, expiring join tokens for interview rooms.

Format (the browser pages decode the payload part to show name and role, so it is a wire contract)::

    base64url(JSON {"iid", "pid", "role", "name", "exp"}) + "." + base64url(HMAC-SHA256(secret, first part))

No padding in either part. `exp` is unix seconds. The signature covers the encoded payload bytes exactly as
sent, so a verifier never re-serialises JSON. Verification is constant-time on the signature and rejects
anything it did not issue with `InvalidToken` carrying a short, loggable reason (never the token itself).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from domain.events import ROLES, Speaker

MAX_NAME_LEN = 100
MAX_TOKEN_LEN = 4096
_MIN_SECRET_BYTES = 16


class InvalidToken(Exception):
    """The bearer token is missing, malformed, forged or expired. `reason` is safe to log and return."""

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

    @property
    def speaker(self) -> Speaker:
        return Speaker(role=self.role, name=self.name, participant_id=self.participant_id)

    def to_payload(self) -> dict[str, Any]:
        return {"iid": self.interview_id, "pid": self.participant_id, "role": self.role, "name": self.name,
                "exp": self.expires_at}


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise InvalidToken("malformed token")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("malformed token") from exc


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


class TokenSigner:
    """Issues and verifies join tokens with one HMAC secret. `clock` returns unix seconds (tests pass their own)."""

    def __init__(self, secret: bytes, *, ttl_s: int = 4 * 3600, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"token secret must be at least {_MIN_SECRET_BYTES} bytes")
        if ttl_s <= 0:
            raise ValueError("token ttl must be positive")
        self._secret = secret
        self.ttl_s = int(ttl_s)
        self._clock = clock

    def _sign(self, encoded_payload: str) -> str:
        return _b64encode(hmac.new(self._secret, encoded_payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, interview_id: str, role: str, name: str, *, participant_id: str | None = None,
              ttl_s: int | None = None) -> tuple[str, JoinClaims]:
        if not interview_id:
            raise ValueError("interview id must not be empty")
        claims = JoinClaims(
            interview_id=interview_id,
            participant_id=participant_id or "p_" + secrets.token_urlsafe(9),
            role=validate_role(role),
            name=validate_name(name),
            expires_at=int(self._clock()) + int(ttl_s if ttl_s is not None else self.ttl_s),
        )
        raw = json.dumps(claims.to_payload(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        encoded = _b64encode(raw)
        return f"{encoded}.{self._sign(encoded)}", claims

    def verify(self, token: str, *, allow_expired: bool = False) -> JoinClaims:
        """The claims of a token this signer issued. `allow_expired` serves leaving, never joining."""
        if not token:
            raise InvalidToken("missing token")
        if len(token) > MAX_TOKEN_LEN:
            raise InvalidToken("malformed token")
        encoded, sep, signature = token.partition(".")
        if not sep or "." in signature:
            raise InvalidToken("malformed token")
        _b64decode(signature)  # shape check only; the comparison below is on the encoded text
        if not hmac.compare_digest(self._sign(encoded), signature):
            raise InvalidToken("bad signature")
        try:
            payload = json.loads(_b64decode(encoded))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidToken("malformed token") from exc
        if not isinstance(payload, dict):
            raise InvalidToken("malformed token")
        try:
            claims = JoinClaims(
                interview_id=_text(payload, "iid"),
                participant_id=_text(payload, "pid"),
                role=validate_role(payload.get("role")),
                name=validate_name(payload.get("name")),
                expires_at=_int(payload, "exp"),
            )
        except ValueError as exc:
            raise InvalidToken("malformed token") from exc
        if not allow_expired and claims.expires_at <= self._clock():
            raise InvalidToken("token expired")
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
