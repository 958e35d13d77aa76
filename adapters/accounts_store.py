"""Accounts in MongoDB (motor, the service's database): organisations, users, API keys, refresh tokens and the join
token revocation list.

Collections
    organisations   `_id` = org id; `name` unique; the organisation's analysis policy (`jurisdiction`,
                    `biasAuditDate`, `alternativeProcessContact`, `toneEnabled`; `domain.analysis.OrgPolicy`).
    users           `_id` = user id; `email` unique across the service (login is by email alone); `passwordHash`
                    (argon2id, PHC string); `disabled` instead of deletion (audit entries keep naming them).
    api_keys        `_id` = key id; `hash` = SHA-256 of the key (unique), never the key; `revoked`.
    refresh_tokens  `_id` = SHA-256 of the opaque token; `family` (every rotation of one login), `used` once
                    rotated, `revoked`.
    revoked_tokens  `_id` = "<interviewId> <jti>" (or "<interviewId> *": every token of the interview); `until`.
    setup_tokens    `_id` = SHA-256 of the one-time setup link's token, never the token; `expiresAt`, `used`. At
                    most one: each start with no users replaces it.

Times are unix seconds (floats): nx-27017 0.8.1 stores a date written by `$set` as a naive string, numbers it
keeps. Driver errors leave as `Unavailable`; a duplicate email or name as `Conflict`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from motor.motor_asyncio import AsyncIOMotorDatabase
from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError, PyMongoError

from domain.model import Conflict, NotFound, Unavailable

P = ParamSpec("P")
R = TypeVar("R")


def _translated(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except PyMongoError as exc:
            if isinstance(exc, DuplicateKeyError):
                raise
            raise Unavailable(f"database error: {type(exc).__name__}: {exc}") from exc

    return wrapper


@dataclass(slots=True)
class User:
    user_id: str
    org_id: str
    email: str
    name: str
    role: str
    password_hash: str
    created_at: float
    disabled: bool = False

    def to_document(self) -> dict[str, Any]:
        return {"_id": self.user_id, "orgId": self.org_id, "email": self.email, "name": self.name, "role": self.role,
                "passwordHash": self.password_hash, "createdAt": self.created_at, "disabled": self.disabled}

    @classmethod
    def from_document(cls, d: dict[str, Any]) -> User:
        return cls(d["_id"], d["orgId"], d["email"], d["name"], d["role"], d["passwordHash"], float(d["createdAt"]),
                   bool(d.get("disabled", False)))


@dataclass(slots=True)
class ApiKey:
    key_id: str
    org_id: str
    name: str
    scopes: list[str]
    key_hash: str
    created_at: float
    last_used_at: float | None = None
    revoked: bool = False
    created_by: str = ""

    def to_document(self) -> dict[str, Any]:
        return {"_id": self.key_id, "orgId": self.org_id, "name": self.name, "scopes": list(self.scopes),
                "hash": self.key_hash, "createdAt": self.created_at, "lastUsedAt": self.last_used_at,
                "revoked": self.revoked, "createdBy": self.created_by}

    @classmethod
    def from_document(cls, d: dict[str, Any]) -> ApiKey:
        return cls(d["_id"], d["orgId"], d["name"], list(d.get("scopes", [])), d["hash"], float(d["createdAt"]),
                   d.get("lastUsedAt"), bool(d.get("revoked", False)), d.get("createdBy", ""))


@dataclass(slots=True)
class RefreshRecord:
    token_hash: str
    family: str
    user_id: str
    org_id: str
    expires_at: float
    used: bool = False
    revoked: bool = False


class AccountsStore:
    def __init__(self, db: AsyncIOMotorDatabase[Any]) -> None:
        self.db = db
        self.organisations = db["organisations"]
        self.users = db["users"]
        self.api_keys = db["api_keys"]
        self.refresh_tokens = db["refresh_tokens"]
        self.revoked_tokens = db["revoked_tokens"]
        self.setup_tokens = db["setup_tokens"]

    @_translated
    async def create_indexes(self) -> None:
        await self.organisations.create_index([("name", ASCENDING)], unique=True)
        await self.users.create_index([("email", ASCENDING)], unique=True)
        await self.users.create_index([("orgId", ASCENDING), ("createdAt", ASCENDING)])
        await self.api_keys.create_index([("hash", ASCENDING)], unique=True)
        await self.api_keys.create_index([("orgId", ASCENDING), ("createdAt", ASCENDING)])
        await self.refresh_tokens.create_index([("family", ASCENDING)])
        await self.refresh_tokens.create_index([("userId", ASCENDING)])
        await self.revoked_tokens.create_index([("until", ASCENDING)])

    # -- organisations --------------------------------------------------------------------------------------

    @_translated
    async def ensure_organisation(self, org_id: str, name: str, now: float) -> str:
        """The id of the organisation called `name`, created as `org_id` when there is none."""
        found = await self.organisations.find_one({"name": name})
        if found is not None:
            return str(found["_id"])
        try:
            await self.organisations.insert_one({"_id": org_id, "name": name, "createdAt": now})
        except DuplicateKeyError:
            found = await self.organisations.find_one({"name": name})
            if found is None:
                raise Conflict(f"organisation id {org_id!r} exists under another name", code="duplicate") from None
            return str(found["_id"])
        return org_id

    @_translated
    async def organisation(self, org_id: str) -> dict[str, Any] | None:
        return await self.organisations.find_one({"_id": org_id})

    @_translated
    async def update_organisation(self, org_id: str, changes: dict[str, Any], now: float) -> dict[str, Any]:
        """The organisation with `changes` applied (created for the default organisation, which exists before
        anyone stores it: `ADMIN_API_KEY` and older data belong to it). A whole-document replace: nx-27017 0.8.1
        has no trustworthy `$set` of dates, and one admin's change at a time is the expected use."""
        doc = await self.organisations.find_one({"_id": org_id}) or {"_id": org_id, "name": org_id, "createdAt": now}
        doc.update(changes, updatedAt=now)
        await self.organisations.replace_one({"_id": org_id}, doc, upsert=True)
        return doc

    # -- users ----------------------------------------------------------------------------------------------

    @_translated
    async def add_user(self, user: User) -> None:
        try:
            await self.users.insert_one(user.to_document())
        except DuplicateKeyError:
            raise Conflict("a user with this email already exists", code="duplicate") from None

    @_translated
    async def has_users(self, role: str | None = None) -> bool:
        """Whether the service has any user (of `role`), in any organisation, disabled ones too."""
        return await self.users.find_one({} if role is None else {"role": role}, {"_id": 1}) is not None

    @_translated
    async def user_by_email(self, email: str) -> User | None:
        doc = await self.users.find_one({"email": email})
        return None if doc is None else User.from_document(doc)

    @_translated
    async def get_user(self, user_id: str) -> User | None:
        doc = await self.users.find_one({"_id": user_id})
        return None if doc is None else User.from_document(doc)

    @_translated
    async def users_of(self, org_id: str, user_ids: list[str]) -> list[User]:
        """Those of `user_ids` that are users of `org_id` (any role, disabled too)."""
        docs = await self.users.find({"_id": {"$in": list(user_ids)}, "orgId": org_id}).to_list(None)
        return [User.from_document(d) for d in docs]

    @_translated
    async def list_users(self, org_id: str) -> list[User]:
        docs = await self.users.find({"orgId": org_id}).sort("createdAt", ASCENDING).to_list(None)
        return [User.from_document(d) for d in docs]

    @_translated
    async def disable_user(self, org_id: str, user_id: str) -> None:
        result = await self.users.update_one({"_id": user_id, "orgId": org_id}, {"$set": {"disabled": True}})
        if result.matched_count == 0:
            raise NotFound("user", user_id)

    # -- API keys -------------------------------------------------------------------------------------------

    @_translated
    async def add_api_key(self, key: ApiKey) -> None:
        await self.api_keys.insert_one(key.to_document())

    @_translated
    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        doc = await self.api_keys.find_one({"hash": key_hash})
        return None if doc is None else ApiKey.from_document(doc)

    @_translated
    async def list_api_keys(self, org_id: str) -> list[ApiKey]:
        docs = await self.api_keys.find({"orgId": org_id}).sort("createdAt", ASCENDING).to_list(None)
        return [ApiKey.from_document(d) for d in docs]

    @_translated
    async def revoke_api_key(self, org_id: str, key_id: str) -> None:
        result = await self.api_keys.update_one({"_id": key_id, "orgId": org_id}, {"$set": {"revoked": True}})
        if result.matched_count == 0:
            raise NotFound("api key", key_id)

    @_translated
    async def touch_api_key(self, key_id: str, at: float) -> None:
        await self.api_keys.update_one({"_id": key_id}, {"$set": {"lastUsedAt": at}})

    # -- refresh tokens -------------------------------------------------------------------------------------

    @_translated
    async def add_refresh(self, record: RefreshRecord) -> None:
        await self.refresh_tokens.insert_one({
            "_id": record.token_hash, "family": record.family, "userId": record.user_id, "orgId": record.org_id,
            "expiresAt": record.expires_at, "used": False, "revoked": False})

    @_translated
    async def get_refresh(self, token_hash: str) -> RefreshRecord | None:
        d = await self.refresh_tokens.find_one({"_id": token_hash})
        if d is None:
            return None
        return RefreshRecord(d["_id"], d["family"], d["userId"], d["orgId"], float(d["expiresAt"]),
                             bool(d.get("used")), bool(d.get("revoked")))

    @_translated
    async def use_refresh(self, token_hash: str) -> bool:
        """Marks the token rotated; False when it already was (a concurrent or replayed use)."""
        result = await self.refresh_tokens.update_one({"_id": token_hash, "used": False, "revoked": False},
                                                      {"$set": {"used": True}})
        return result.modified_count == 1

    @_translated
    async def revoke_family(self, family: str) -> None:
        await self.refresh_tokens.update_many({"family": family}, {"$set": {"revoked": True}})

    @_translated
    async def revoke_user_refresh(self, user_id: str) -> None:
        await self.refresh_tokens.update_many({"userId": user_id}, {"$set": {"revoked": True}})

    # -- the one-time setup link -----------------------------------------------------------------------------

    @_translated
    async def replace_setup_token(self, token_hash: str | None, expires_at: float) -> None:
        """Drops every setup token and, unless `token_hash` is None, stores that one."""
        await self.setup_tokens.delete_many({})
        if token_hash is not None:
            await self.setup_tokens.insert_one({"_id": token_hash, "expiresAt": expires_at, "used": False})

    @_translated
    async def get_setup_token(self, token_hash: str) -> tuple[float, bool] | None:
        """(expiresAt, used) of the setup token with this hash, None if there is none."""
        d = await self.setup_tokens.find_one({"_id": token_hash})
        return None if d is None else (float(d["expiresAt"]), bool(d.get("used")))

    @_translated
    async def use_setup_token(self, token_hash: str) -> bool:
        """Marks it used; False when it already was (the other of two concurrent uses)."""
        result = await self.setup_tokens.update_one({"_id": token_hash, "used": False}, {"$set": {"used": True}})
        return result.modified_count == 1

    # -- join token revocations (adapters.tokens.RevocationStore) -------------------------------------------

    @_translated
    async def add_revocation(self, interview_id: str, token_id: str | None, until: float) -> None:
        doc_id = f"{interview_id} {token_id or '*'}"
        await self.revoked_tokens.replace_one(
            {"_id": doc_id}, {"interviewId": interview_id, "tokenId": token_id, "until": until}, upsert=True)

    @_translated
    async def list_revocations(self, now: float) -> list[tuple[str, str | None]]:
        docs = await self.revoked_tokens.find({"until": {"$gt": now}}).to_list(None)
        return [(d["interviewId"], d.get("tokenId")) for d in docs]
