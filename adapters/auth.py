"""Authentication: passwords, access tokens, refresh tokens, API keys, and who a request's bearer token is.

Passwords are argon2id (`argon2-cffi`) with `PASSWORD_PARAMS`, measured on this machine (2-core AMD EPYC, one
thread): t=2, m=32 MiB, p=1 takes ~66 ms per hash (t=2/19 MiB 26 ms, t=3/32 MiB 92 ms, t=3/64 MiB 230 ms);
`python -m benchmarks.api` prints the login p50/p95. Hashing runs in a thread, never on the event loop. An unknown
email is verified against a dummy hash, so it costs what a wrong password costs and answers the same 401.

Access tokens are JWTs (HS256, PyJWT) of at most 15 minutes: `kid` names the signing key of the key ring in
`DATA_DIR/jwt_keys.json` (0600). `python server.py rotate-jwt-key` adds a new key and makes it the signing key;
older keys keep verifying until every token they signed has expired (`KeyRing.RETIRED_KEEP_S`), so a rotation
logs nobody out. A running server notices the new file on its next signature.

Refresh tokens are opaque (32 random bytes), stored as SHA-256 hashes, rotated on every use. Each login starts a
family; using a token that was already rotated (a stolen copy, or the thief's after the owner's) revokes the
whole family, so both parties must log in again. A token revoked before it was used (logout, a revoked family, a
disabled user) is refused as an ended session, not as a reuse.

API keys are `iwk_<random>`, shown once, stored as SHA-256 hashes with their scopes. `ADMIN_API_KEY` is an
admin-scoped key of the default organisation held in memory only.

The one-time setup link (`/app/setup?token=...`): on an embedded first start with no users and no `ADMIN_API_KEY`
the server mints a token (32 random bytes, stored as its SHA-256, valid `SETUP_TTL_S`) and prints the link; whoever
opens it sets the first admin's email and password (`setup_admin`). It works once; once used or expired, or once any
admin exists (made by `create-admin`, say), it answers 410, and an unknown token 404.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from adapters.accounts_store import AccountsStore, ApiKey, RefreshRecord, User
from adapters.http_edge import HttpError
from adapters.rate_limits import RateLimits
from adapters.tokens import InvalidToken, TokenSigner, bearer_token
from domain.access import (
    ADMIN,
    ADMIN_SCOPE,
    ANONYMOUS,
    API_KEY_SCOPES,
    DEFAULT_ORG,
    INTERVIEWER,
    USER_ROLES,
    Principal,
)
from domain.model import EMAIL_RE, ValidationError

log = logging.getLogger(__name__)

# argon2id t=2, m=32 MiB, p=1: ~66 ms per hash on this machine (see above)
PASSWORD_TIME_COST, PASSWORD_MEMORY_KIB, PASSWORD_PARALLELISM = 2, 32 * 1024, 1
MIN_PASSWORD_LEN = 10
MAX_PASSWORD_LEN = 1024
ACCESS_AUDIENCE = "api"
API_KEY_PREFIX = "iwk_"
ADMIN_KEY_ID = "admin-api-key"
_API_KEY_TOUCH_S = 60.0  # lastUsedAt is written at most this often per key (not one write per request)
_API_KEY_CACHE_S = 5.0
SETUP_TTL_S = 24 * 3600.0  # the setup link: long enough to open it the next morning, not a standing door

INVALID_TOKEN_HEADERS = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def invalid_token(reason: str) -> HttpError:
    return HttpError(401, "invalid_token", reason, dict(INVALID_TOKEN_HEADERS))


class Passwords:
    def __init__(self, time_cost: int = PASSWORD_TIME_COST, memory_kib: int = PASSWORD_MEMORY_KIB,
                 parallelism: int = PASSWORD_PARALLELISM) -> None:
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._dummy = self.hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches; None (an unknown user) is checked against a dummy hash, at the same cost."""
        def check() -> bool:
            try:
                return self.hasher.verify(password_hash or self._dummy, password) and password_hash is not None
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)


def _check_user(email: object, role: object, name: object, password: object) -> None:
    """422 naming every bad field of a new user."""
    problems: dict[str, str] = {}
    if not isinstance(email, str) or not EMAIL_RE.fullmatch(email.strip()) or len(email) > 254:
        problems["email"] = "expected an email address"
    if role not in USER_ROLES:
        problems["role"] = f"expected one of {', '.join(USER_ROLES)}"
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        problems["name"] = "expected 1 to 200 characters"
    try:
        validate_password(password)
    except ValidationError as exc:
        problems.update(exc.fields)
    if problems:
        raise ValidationError(problems)


def validate_password(password: object) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD_LEN <= len(password) <= MAX_PASSWORD_LEN:
        raise ValidationError({"password": f"expected {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"})
    return password


# ---- signing keys --------------------------------------------------------------------------------------------


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


class KeyRing:
    """HS256 keys by `kid`: the newest signs, retired ones verify for `RETIRED_KEEP_S` after their retirement."""

    RETIRED_KEEP_S = 24 * 3600.0  # far longer than an access token lives

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self._keys: dict[str, bytes] = {}
        self._current = ""
        self._load()

    @staticmethod
    def _new_key(now: float) -> dict[str, Any]:
        return {"kid": uuid.uuid4().hex[:12], "secret": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                "createdAt": now, "retiredAt": None}

    @classmethod
    def rotate(cls, path: Path, now: float | None = None) -> str:
        """Adds a new signing key to the ring at `path` (created if missing); returns its kid."""
        now = time.time() if now is None else now
        data = json.loads(path.read_text()) if path.exists() else {"keys": []}
        keys = []
        for key in data["keys"]:
            if key.get("retiredAt") is None:
                key["retiredAt"] = now
            if now - key["retiredAt"] < cls.RETIRED_KEEP_S:
                keys.append(key)
        new = cls._new_key(now)
        keys.append(new)
        _write_private(path, {"current": new["kid"], "keys": keys})
        return str(new["kid"])

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self.rotate(self.path)
            mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return
        data = json.loads(self.path.read_text())
        self._keys = {k["kid"]: base64.urlsafe_b64decode(k["secret"]) for k in data["keys"]}
        self._current = data["current"]
        self._mtime = mtime

    def signing_key(self) -> tuple[str, bytes]:
        self._load()
        return self._current, self._keys[self._current]

    def key(self, kid: str) -> bytes | None:
        if kid not in self._keys:
            self._load()
        return self._keys.get(kid)


class AccessTokens:
    def __init__(self, ring: KeyRing, *, ttl_s: int = 900, clock: Callable[[], float] = time.time) -> None:
        if not 0 < ttl_s <= 900:
            raise ValueError("access tokens live at most 15 minutes")
        self.ring = ring
        self.ttl_s = ttl_s
        self._clock = clock

    def issue(self, user: User) -> str:
        kid, key = self.ring.signing_key()
        now = int(self._clock())
        payload = {"sub": user.user_id, "org": user.org_id, "role": user.role, "iat": now, "exp": now + self.ttl_s,
                   "jti": secrets.token_urlsafe(9), "aud": ACCESS_AUDIENCE}
        return jwt.encode(payload, key, algorithm="HS256", headers={"kid": kid})

    def verify(self, token: str) -> Principal:
        """The user the token was issued to (raises InvalidToken: malformed, unknown key, bad signature, expired)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        key = self.ring.key(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("unknown signing key")
        try:
            claims = jwt.decode(token, key, algorithms=["HS256"], audience=ACCESS_AUDIENCE,
                                options={"verify_exp": False, "verify_iat": False,
                                         "require": ["exp", "sub", "org", "role"]})
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= self._clock():
            raise InvalidToken("token expired")
        if claims["role"] not in USER_ROLES:
            raise InvalidToken("malformed token")
        return Principal.user(str(claims["sub"]), str(claims["org"]), str(claims["role"]))


# ---- the accounts service ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """What a login or a refresh returns: the access token (for memory) and the refresh token (for the cookie)."""

    access_token: str
    expires_in: int
    refresh_token: str
    user: User


class Accounts:
    """Users, logins, refresh rotation, API keys, and who a bearer token is (`principal`)."""

    def __init__(self, store: AccountsStore, access: AccessTokens, join: TokenSigner, limits: RateLimits, *,
                 admin_api_key: str | None = None, passwords: Passwords | None = None,
                 refresh_ttl_s: int = 14 * 24 * 3600, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.access = access
        self.join = join
        self.limits = limits
        self.admin_api_key = admin_api_key
        self.passwords = passwords or Passwords()
        self.refresh_ttl_s = refresh_ttl_s
        self._clock = clock
        self._key_cache: dict[str, tuple[ApiKey, float]] = {}
        self._touched: dict[str, float] = {}

    # -- who is calling -----------------------------------------------------------------------------------

    async def principal(self, authorization: str | None) -> Principal:
        """The caller of a request with this Authorization header (ANONYMOUS without one). A token that is not
        valid is a 401 `invalid_token`, never anonymous; an API key over its request rate a 429."""
        if not authorization:
            return ANONYMOUS
        try:
            token = bearer_token(authorization)
        except InvalidToken as exc:
            raise invalid_token(exc.reason) from None
        if self.admin_api_key and hmac.compare_digest(token.encode(), self.admin_api_key.encode()):
            return await self._limited_key(Principal.api_key(ADMIN_KEY_ID, DEFAULT_ORG, {ADMIN_SCOPE}))
        if token.startswith(API_KEY_PREFIX):
            key = await self._api_key(token)
            if key is None:
                raise invalid_token("unknown or revoked API key")
            return await self._limited_key(Principal.api_key(key.key_id, key.org_id, set(key.scopes)))
        try:
            audience = jwt.decode(token, options={"verify_signature": False}).get("aud")
        except jwt.PyJWTError:
            raise invalid_token("malformed token") from None
        try:
            if audience == ACCESS_AUDIENCE:
                return self.access.verify(token)
            claims = self.join.verify(token)
        except InvalidToken as exc:
            raise invalid_token(exc.reason) from None
        return Principal.participant(claims.participant_id, claims.org_id, claims.role, claims.interview_id,
                                     claims.token_id)

    async def _limited_key(self, principal: Principal) -> Principal:
        retry = await self.limits.hit("api_key", principal.subject)
        if retry is not None:
            raise HttpError(429, "too_many_requests", "this API key is over its request rate",
                            {"Retry-After": str(int(retry))})
        return principal

    async def _api_key(self, token: str) -> ApiKey | None:
        digest = sha256(token)
        now = self._clock()
        cached = self._key_cache.get(digest)
        if cached is not None and now - cached[1] < _API_KEY_CACHE_S:
            key: ApiKey | None = cached[0]
        else:
            key = await self.store.api_key_by_hash(digest)
            if key is not None:
                self._key_cache[digest] = (key, now)
        if key is None or key.revoked:
            return None
        if now - self._touched.get(key.key_id, 0.0) >= _API_KEY_TOUCH_S:
            self._touched[key.key_id] = now
            await self.store.touch_api_key(key.key_id, now)
        return key

    # -- login, refresh, logout ---------------------------------------------------------------------------

    async def login(self, email: str, password: str, address: str) -> Session:
        """401 `invalid_credentials` for an unknown email, a wrong password or a disabled user alike (same answer,
        same argon2 cost); 429 with Retry-After once the address or the account is over its rate."""
        email = email.strip().lower()
        retry = await self.limits.hit("login_address", address) or \
            await self.limits.exhausted("login_account", email)
        if retry is not None:
            raise HttpError(429, "too_many_attempts", "too many login attempts; retry later",
                            {"Retry-After": str(int(retry))})
        user = await self.store.user_by_email(email)
        ok = await self.passwords.verify(user.password_hash if user else None, password)
        if not ok or user is None or user.disabled:
            await self.limits.hit("login_account", email)
            raise HttpError(401, "invalid_credentials", "wrong email or password")
        return await self._session(user, family=uuid.uuid4().hex)

    async def _session(self, user: User, family: str) -> Session:
        refresh = secrets.token_urlsafe(32)
        await self.store.add_refresh(RefreshRecord(sha256(refresh), family, user.user_id, user.org_id,
                                                   self._clock() + self.refresh_ttl_s))
        return Session(self.access.issue(user), self.access.ttl_s, refresh, user)

    async def refresh(self, token: str) -> Session:
        """A new session for a valid refresh token, which is rotated; reuse of a rotated one revokes its family
        (401 `refresh_token_reused`); a token of an ended session is 401 `refresh_token_revoked`."""
        record = await self.store.get_refresh(sha256(token)) if token else None
        if record is None:
            raise HttpError(401, "invalid_refresh_token", "unknown refresh token")
        rotated = not (record.used or record.revoked) and await self.store.use_refresh(record.token_hash)
        if not rotated:
            if not (record.used or record.revoked):  # lost a race to a logout or another use: read it again
                record = await self.store.get_refresh(record.token_hash)
                if record is None:
                    raise HttpError(401, "invalid_refresh_token", "unknown refresh token")
            if record.revoked and not record.used:
                # never rotated, so nothing was replayed: its session was logged out, or its family or user revoked
                raise HttpError(401, "refresh_token_revoked",
                                "this session has ended (logged out or revoked); log in again")
            await self.store.revoke_family(record.family)
            log.warning("refresh token reuse for user %s: family revoked", record.user_id)
            raise HttpError(401, "refresh_token_reused", "this refresh token was already used; log in again")
        if record.expires_at <= self._clock():
            raise HttpError(401, "invalid_refresh_token", "refresh token expired")
        user = await self.store.get_user(record.user_id)
        if user is None or user.disabled:
            await self.store.revoke_family(record.family)
            raise HttpError(401, "invalid_refresh_token", "the account is disabled")
        return await self._session(user, record.family)

    async def logout(self, token: str) -> None:
        record = await self.store.get_refresh(sha256(token)) if token else None
        if record is not None:
            await self.store.revoke_family(record.family)

    # -- administration -----------------------------------------------------------------------------------

    async def create_user(self, org_id: str, email: object, role: object, name: object, password: object) -> User:
        _check_user(email, role, name, password)
        assert isinstance(email, str) and isinstance(name, str) and isinstance(password, str)
        user = User(uuid.uuid4().hex, org_id, email.strip().lower(), " ".join(name.split()), str(role),
                    await self.passwords.hash(password), self._clock())
        await self.store.add_user(user)
        log.info("user %s created in organisation %s with role %s", user.user_id, org_id, role)
        return user

    async def create_admin(self, email: str, org_name: str, password: str, name: str | None = None) -> User:
        """The first admin of an organisation (created if missing; the name "default" is the default one)."""
        org_id = DEFAULT_ORG if org_name == DEFAULT_ORG else "org_" + uuid.uuid4().hex[:12]
        org_id = await self.store.ensure_organisation(org_id, org_name, self._clock())
        return await self.create_user(org_id, email, ADMIN, name or email.split("@")[0] or "admin", password)

    # -- the one-time setup link --------------------------------------------------------------------------

    async def open_setup(self) -> str | None:
        """A new setup token when the service has no user yet (any earlier one no longer works), else None."""
        if await self.store.has_users():
            await self.store.replace_setup_token(None, 0.0)
            return None
        token = secrets.token_urlsafe(32)
        await self.store.replace_setup_token(sha256(token), self._clock() + SETUP_TTL_S)
        return token

    async def setup_admin(self, token: object, email: object, name: object, password: object) -> User:
        """The first admin of the default organisation, by the setup link's token: 404 unknown token, 410 used,
        expired or an admin exists already, 422 bad fields (the token stays usable)."""
        token_hash = sha256(token) if isinstance(token, str) and token else ""
        record = await self.store.get_setup_token(token_hash) if token_hash else None
        if record is None:
            raise HttpError(404, "not_found", "unknown setup link")
        if await self.store.has_users(ADMIN):
            raise HttpError(410, "setup_done", "an admin exists: sign in, or ask an admin for an account")
        expires_at, used = record
        if used:
            raise HttpError(410, "setup_used", "this setup link was already used")
        if expires_at <= self._clock():
            raise HttpError(410, "setup_expired", "this setup link has expired: restart the server for a new one, or "
                                                  "use python server.py create-admin")
        if name is None and isinstance(email, str):
            name = email.split("@")[0] or "admin"
        _check_user(email, ADMIN, name, password)
        assert isinstance(email, str) and isinstance(name, str) and isinstance(password, str)
        if not await self.store.use_setup_token(token_hash):
            raise HttpError(410, "setup_used", "this setup link was already used")
        user = await self.create_admin(email, DEFAULT_ORG, password, name)
        log.info("first admin %s created with the setup link", user.user_id)
        return user

    async def check_interviewers(self, org_id: str, user_ids: list[str]) -> None:
        """422 naming each id that is not an active user of `org_id` with the role `interviewer` (an admin or an HR
        user is not assignable: assignment is what lets an interviewer in, and those roles see everything anyway).
        Another organisation's user gets the same answer as an unknown id."""
        if not user_ids:
            return
        found = {u.user_id: u for u in await self.store.users_of(org_id, user_ids)}
        problems = {}
        for i, uid in enumerate(user_ids):
            user = found.get(uid)
            if user is None:
                problems[f"interviewers[{i}]"] = f"{uid!r} is not a user of this organisation"
            elif user.role != INTERVIEWER:
                problems[f"interviewers[{i}]"] = f"{uid!r} has the role {user.role}, not interviewer"
            elif user.disabled:
                problems[f"interviewers[{i}]"] = f"{uid!r} is disabled"
        if problems:
            raise ValidationError(problems)

    async def disable_user(self, org_id: str, user_id: str) -> None:
        await self.store.disable_user(org_id, user_id)
        await self.store.revoke_user_refresh(user_id)

    async def create_api_key(self, org_id: str, name: object, scopes: object, created_by: str) -> tuple[ApiKey, str]:
        problems: dict[str, str] = {}
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            problems["name"] = "expected 1 to 100 characters"
        if (not isinstance(scopes, list) or not scopes or len(scopes) > len(API_KEY_SCOPES)
                or any(s not in API_KEY_SCOPES for s in scopes)):
            problems["scopes"] = f"expected a non-empty list of: {', '.join(API_KEY_SCOPES)}"
        if problems:
            raise ValidationError(problems)
        assert isinstance(name, str) and isinstance(scopes, list)
        secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey("key_" + uuid.uuid4().hex[:16], org_id, name.strip(), sorted(set(scopes)), sha256(secret),
                     self._clock(), created_by=created_by)
        await self.store.add_api_key(key)
        log.info("API key %s created in organisation %s", key.key_id, org_id)
        return key, secret

    async def revoke_api_key(self, org_id: str, key_id: str) -> None:
        await self.store.revoke_api_key(org_id, key_id)
        self._key_cache = {h: v for h, v in self._key_cache.items() if v[0].key_id != key_id}
