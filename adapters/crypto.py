"""Field encryption at rest, blind indexes and signed receipts: every key the service holds about personal data.

Keys
    master keys (KEKs)  in `MASTER_KEY_FILE` (default `DATA_DIR/master_key`, JSON, mode 0600): AES-256 keys by key
                        id, the current one wrapping new data keys, and the blind-index key. Never in the database.
    data keys (DEKs)    one AES-256 key per candidate, in the store's `keys` collection, wrapped (AES-256-GCM) by a
                        master key and stored with that key's id (`kek`). Destroying a candidate's DEK makes every
                        copy of their encrypted fields anywhere (documents, JetStream messages, backups) unreadable.
    index key           HMAC-SHA256 key of the blind indexes (email equality lookups), separate from the KEKs so
                        a master-key rotation never re-indexes.
    receipt key         Ed25519 key signing erasure/export receipts (`DATA_DIR/receipt_key.pem`, mode 0600).

A sealed field is the string `enc1:<dek id>:<base64url(nonce ‖ ciphertext ‖ tag)>` of the field's JSON value,
with the field's name as associated data (a ciphertext moved to another field does not open). Empty values
(None, "", []) are stored as they are: they hold nothing personal.

`KeyRing.check()` runs at start: a database with encrypted data and a missing or different master key refuses
to start (`MasterKeyRefused`, with a message saying what to restore); a new master key is only
ever generated when the database has no encrypted data at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pymongo.errors import DuplicateKeyError

log = logging.getLogger(__name__)

PREFIX = "enc1:"
_NONCE = 12  # AES-GCM's 96-bit nonce (NIST SP 800-38D), random per field: 2^32 seals per key stay far below risk
_CHECK_TEXT = b"interview-worker master key check"
_META_ID = "_meta"


class MasterKeyRefused(RuntimeError):
    """The master key file and the database do not go together: the server must not start."""


class Unreadable(Exception):
    """A sealed field that does not open (tampered, wrong key, or its data key destroyed)."""


class CandidateErased(Exception):
    """A data key was asked for a candidate whose data was erased: nothing more is stored about them."""

    def __init__(self, candidate_id: str) -> None:
        super().__init__(f"candidate {candidate_id!r} was erased")
        self.candidate_id = candidate_id


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600 (a crash leaves the old file or the new, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---- master keys ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class MasterKeys:
    """The master key file: KEKs by id (`current` wraps new data keys) and the blind-index key."""

    keks: dict[str, bytes]
    current: str
    index_key: bytes
    path: Path | None = None

    def __repr__(self) -> str:
        return f"MasterKeys(current={self.current!r}, kids={sorted(self.keks)!r}, <keys redacted>)"

    @classmethod
    def generate(cls, path: Path | None = None) -> MasterKeys:
        kid = "k" + secrets.token_hex(4)
        return cls({kid: AESGCM.generate_key(256)}, kid, secrets.token_bytes(32), path)

    @classmethod
    def load(cls, path: Path) -> MasterKeys:
        try:
            raw = json.loads(path.read_text())
            keks = {str(k): unb64u(v) for k, v in raw["keks"].items()}
            keys = cls(keks, str(raw["current"]), unb64u(raw["indexKey"]), path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MasterKeyRefused(f"master key file {path} cannot be read ({type(exc).__name__}): restore it "
                                   "from your backup") from exc
        if keys.current not in keys.keks or any(len(k) != 32 for k in keys.keks.values()) or len(
                keys.index_key) != 32:
            raise MasterKeyRefused(f"master key file {path} is damaged: restore it from your backup")
        return keys

    def save(self, path: Path | None = None) -> None:
        target = path or self.path
        assert target is not None
        body = {"version": 1, "current": self.current, "keks": {k: b64u(v) for k, v in self.keks.items()},
                "indexKey": b64u(self.index_key)}
        _write_private(target, json.dumps(body, indent=1).encode())
        self.path = target

    def wrap(self, dek: bytes, aad: str) -> tuple[str, str]:
        """(kek id, wrapped key) of `dek` under the current master key."""
        nonce = secrets.token_bytes(_NONCE)
        return self.current, b64u(nonce + AESGCM(self.keks[self.current]).encrypt(nonce, dek, aad.encode()))

    def unwrap(self, kek_id: str, wrapped: str, aad: str) -> bytes:
        kek = self.keks.get(kek_id)
        if kek is None:
            raise Unreadable(f"master key {kek_id} is not in the master key file")
        raw = unb64u(wrapped)
        try:
            return AESGCM(kek).decrypt(raw[:_NONCE], raw[_NONCE:], aad.encode())
        except InvalidTag:
            raise Unreadable(f"a data key does not open with master key {kek_id}") from None

    def journal_key(self) -> DataKey:
        """The key of the segment journal (`adapters.rooms.SegmentJournal`): finals waiting for the store are on
        disk only sealed. Derived from the blind-index key, which `rotate-master-key` keeps, so a journal left by a
        killed server still opens after a rotation."""
        return self._derived_key("journal", b"interview-worker segment journal v1")

    def shared_state_key(self) -> DataKey:
        """The key of the room backlogs shared in Redis (`adapters.shared_state.RedisState`): transcript text is in
        Redis only sealed. Every node has the same master key file, so each opens what the others wrote."""
        return self._derived_key("shared", b"interview-worker shared backlog v1")

    def _derived_key(self, kid: str, info: bytes) -> DataKey:
        return DataKey(kid, kid, HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(self.index_key))

    def blind_index(self, value: str) -> str:
        """HMAC-SHA256 of a normalised value: equal inputs give equal indexes, which reveal nothing else."""
        return "bi1:" + b64u(hmac.new(self.index_key, value.strip().lower().encode(), hashlib.sha256).digest())


# ---- data keys -----------------------------------------------------------------------------------------------


class DataKey:
    """One candidate's data key: seals and opens their fields."""

    __slots__ = ("_aead", "candidate_id", "kid")

    def __init__(self, kid: str, candidate_id: str, key: bytes) -> None:
        self.kid = kid
        self.candidate_id = candidate_id
        self._aead = AESGCM(key)

    def seal(self, name: str, value: Any) -> Any:
        """`value` (any JSON value) sealed for the field `name`; empty values stay as they are."""
        if value is None or value == "" or value == [] or value == {}:
            return value
        plain = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        nonce = secrets.token_bytes(_NONCE)
        return f"{PREFIX}{self.kid}:{b64u(nonce + self._aead.encrypt(nonce, plain, name.encode()))}"

    def open(self, name: str, sealed: str) -> Any:
        try:
            raw = unb64u(sealed.split(":", 2)[2])
            return json.loads(self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], name.encode()))
        except (InvalidTag, IndexError, ValueError) as exc:
            raise Unreadable(f"field {name} does not open") from exc


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def key_id_of(sealed: str) -> str:
    return sealed.split(":", 2)[1] if sealed.count(":") >= 2 else ""


def field_parent(doc: dict[str, Any], path: str) -> tuple[dict[str, Any] | None, str]:
    """The dict holding the dotted `path`'s last part, and that part (None when a parent is missing)."""
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None, last
    return (node if isinstance(node, dict) else None), last


def seal_fields(doc: dict[str, Any], paths: Iterable[str], key: DataKey | None) -> dict[str, Any]:
    """`doc` with the dotted `paths` sealed in place (no key: unchanged, the null cipher of the benchmark)."""
    if key is None:
        return doc
    for path in paths:
        parent, name = field_parent(doc, path)
        if parent is not None and name in parent and not is_sealed(parent[name]):
            parent[name] = key.seal(path, parent[name])
    return doc


@dataclass(slots=True)
class Opened:
    """What `KeyRing.open_fields` could not open: their paths (set to their empty value in the document)."""

    unreadable: list[str] = field(default_factory=list)


class KeyRing:
    """Data keys in the `keys` collection (`_id` = candidate id; `kid`, `dek` wrapped, `kek`, `createdAt`), the
    `_meta` document that proves which master key the database belongs to, and the erasure records
    (`erasures`, `_id` = candidate id). Unwrapped data keys are cached in memory; `destroy` forgets them."""

    def __init__(self, db: Any, master: MasterKeys, *, on_unreadable: Callable[[], None] | None = None) -> None:
        self.keys = db["keys"]
        self.erasures = db["erasures"]
        self.master = master
        self.on_unreadable = on_unreadable or (lambda: None)
        self._by_candidate: dict[str, DataKey] = {}
        self._by_kid: dict[str, DataKey] = {}
        self._erased: set[str] = set()

    # -- start -------------------------------------------------------------------------------------------------
    @classmethod
    async def open(cls, db: Any, key_file: Path, *, on_unreadable: Callable[[], None] | None = None) -> KeyRing:
        """The key ring of `db` with the master keys of `key_file`, checked against the database; a missing file
        is generated only when the database holds no encrypted data. Raises `MasterKeyRefused`."""
        meta = await db["keys"].find_one({"_id": _META_ID})
        if await asyncio.to_thread(key_file.exists):
            master = MasterKeys.load(key_file)
        elif meta is not None:
            raise MasterKeyRefused(
                f"MASTER_KEY_FILE {key_file} is missing, but the database holds personal data encrypted under "
                f"master key {meta.get('kek')!r}: restore the key file from your backup (a new key would leave "
                "all that data unreadable)")
        else:
            master = MasterKeys.generate(key_file)
            master.save()
            log.info("generated a new master key %s in %s (back it up: without it the data cannot be read)",
                     master.current, key_file)
        ring = cls(db, master, on_unreadable=on_unreadable)
        await ring._check(meta)
        await ring.keys.create_index("kid", unique=True)
        return ring

    async def _check(self, meta: dict[str, Any] | None) -> None:
        index_check = self.master.blind_index("check")
        if meta is None:
            kid, wrapped = self.master.wrap(_CHECK_TEXT, _META_ID)
            with contextlib.suppress(DuplicateKeyError):  # another instance wrote it first: checked below
                await self.keys.insert_one({"_id": _META_ID, "kid": _META_ID, "kek": kid, "check": wrapped,
                                            "indexCheck": index_check})
            meta = await self.keys.find_one({"_id": _META_ID})
            assert meta is not None
        try:
            self.master.unwrap(meta["kek"], meta["check"], _META_ID)
        except Unreadable:
            raise MasterKeyRefused(
                f"the master key file {self.master.path} does not belong to this database: its data is encrypted "
                f"under master key {meta['kek']!r}, the file holds {sorted(self.master.keks)}. Set MASTER_KEY_FILE "
                "to the right file or restore it from your backup") from None
        if meta.get("indexCheck") != index_check:
            raise MasterKeyRefused(f"the blind-index key in {self.master.path} is not this database's: restore the "
                                   "key file from your backup")

    # -- data keys ---------------------------------------------------------------------------------------------
    def _cache(self, key: DataKey) -> DataKey:
        self._by_candidate[key.candidate_id] = key
        self._by_kid[key.kid] = key
        return key

    def _unwrap(self, doc: dict[str, Any]) -> DataKey:
        raw = self.master.unwrap(doc["kek"], doc["dek"], f"dek:{doc['_id']}:{doc['kid']}")
        return DataKey(doc["kid"], doc["_id"], raw)

    async def is_erased(self, candidate_id: str) -> bool:
        if candidate_id in self._erased:
            return True
        if await self.erasures.find_one({"_id": candidate_id}, {"_id": 1}) is not None:
            self._erased.add(candidate_id)
            return True
        return False

    async def data_key(self, candidate_id: str, *, create: bool = True) -> DataKey | None:
        """The candidate's data key, created on first use (`create`); None when there is none (or it was
        destroyed and `create` is False). Raises `CandidateErased` rather than create one for an erased candidate."""
        key = self._by_candidate.get(candidate_id)
        if key is not None:
            return key
        doc = await self.keys.find_one({"_id": candidate_id})
        if doc is None:
            if not create:
                return None
            if await self.is_erased(candidate_id):
                raise CandidateErased(candidate_id)
            kid = "d" + secrets.token_hex(6)
            dek = AESGCM.generate_key(256)
            kek, wrapped = self.master.wrap(dek, f"dek:{candidate_id}:{kid}")
            try:
                await self.keys.insert_one({"_id": candidate_id, "kid": kid, "dek": wrapped, "kek": kek,
                                            "createdAt": datetime.now(UTC)})
                return self._cache(DataKey(kid, candidate_id, dek))
            except DuplicateKeyError:  # created concurrently: use that one
                doc = await self.keys.find_one({"_id": candidate_id})
                if doc is None:
                    raise CandidateErased(candidate_id) from None
        return self._cache(self._unwrap(doc))

    async def data_key_by_id(self, kid: str) -> DataKey | None:
        key = self._by_kid.get(kid)
        if key is not None:
            return key
        doc = await self.keys.find_one({"kid": kid})
        if doc is None or doc["_id"] == _META_ID:
            return None
        return self._cache(self._unwrap(doc))

    async def destroy(self, candidate_id: str) -> bool:
        """Crypto-shredding: delete the candidate's data key (and forget it here). True if there was one."""
        key = self._by_candidate.pop(candidate_id, None)
        if key is not None:
            self._by_kid.pop(key.kid, None)
        self._erased.add(candidate_id)
        result = await self.keys.delete_one({"_id": candidate_id})
        return bool(result.deleted_count)

    # -- reading -----------------------------------------------------------------------------------------------
    async def open_fields(self, doc: dict[str, Any], paths: Iterable[str], empty: Callable[[str], Any]) -> list[str]:
        """Open the sealed `paths` of `doc` in place; the ones that do not open become `empty(path)` and are
        returned (each counted by `on_unreadable`, and logged without its content)."""
        unreadable: list[str] = []
        for path in paths:
            parent, name = field_parent(doc, path)
            if parent is None or not is_sealed(parent.get(name)):
                continue
            sealed = parent[name]
            try:
                key = await self.data_key_by_id(key_id_of(sealed))
                if key is None:
                    raise Unreadable("its data key was destroyed")
                parent[name] = key.open(path, sealed)
            except Unreadable as exc:
                parent[name] = empty(path)
                unreadable.append(path)
                self.on_unreadable()
                log.warning("field %s of %s is unreadable: %s", path, doc.get("_id", "?"), exc)
        return unreadable

    # -- rotation ----------------------------------------------------------------------------------------------
    async def rotate_master_key(self) -> tuple[str, int]:
        """A new current master key; every data key and the check re-wrapped under it, the old master keys
        then dropped from the file. The data itself is not touched. Returns (new key id, data keys re-wrapped)."""
        new_kid = "k" + secrets.token_hex(4)
        self.master.keks[new_kid] = AESGCM.generate_key(256)
        self.master.current = new_kid
        self.master.save()  # from here on both keys are in the file: a crash mid-way loses nothing
        count = 0
        async for doc in self.keys.find({"kek": {"$ne": new_kid}}):
            if doc["_id"] == _META_ID:
                raw = self.master.unwrap(doc["kek"], doc["check"], _META_ID)
                kek, wrapped = self.master.wrap(raw, _META_ID)
                await self.keys.update_one({"_id": _META_ID}, {"$set": {"kek": kek, "check": wrapped}})
                continue
            aad = f"dek:{doc['_id']}:{doc['kid']}"
            kek, wrapped = self.master.wrap(self.master.unwrap(doc["kek"], doc["dek"], aad), aad)
            await self.keys.update_one({"_id": doc["_id"], "kek": doc["kek"]}, {"$set": {"kek": kek, "dek": wrapped}})
            count += 1
        if await self.keys.count_documents({"kek": {"$ne": new_kid}}) == 0:
            self.master.keks = {new_kid: self.master.keks[new_kid]}
            self.master.save()
        return new_kid, count


# ---- receipts ------------------------------------------------------------------------------------------------


def canonical(value: Any) -> bytes:
    """The bytes a receipt signature covers: JSON with sorted keys, no spaces, UTF-8."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


class ReceiptSigner:
    """The service's Ed25519 key (`DATA_DIR/receipt_key.pem`, generated on first use, mode 0600)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_raw = raw
        self.kid = "r" + b64u(hashlib.sha256(raw).digest())[:15]

    def __repr__(self) -> str:
        return f"ReceiptSigner(kid={self.kid!r})"

    @classmethod
    def load_or_create(cls, path: Path) -> ReceiptSigner:
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise MasterKeyRefused(f"{path} is not an Ed25519 private key")
            return cls(key)
        key = Ed25519PrivateKey.generate()
        _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cls(key)

    def sign(self, receipt: dict[str, Any]) -> dict[str, Any]:
        """`{"receipt", "signature"}` with the receipt's `kid` set to this key's."""
        body = {**receipt, "kid": self.kid}
        return {"receipt": body, "signature": b64u(self._private.sign(canonical(body)))}

    def jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "x": b64u(self.public_raw), "kid": self.kid, "use": "sig",
                "alg": "EdDSA"}


def verify_receipt(signed: Any, jwks: Iterable[dict[str, Any]]) -> bool:
    """True when `signed` is `{"receipt": {..., "kid"}, "signature"}` signed by the key of that kid in `jwks`."""
    if not isinstance(signed, dict) or not isinstance(signed.get("receipt"), dict):
        return False
    receipt, signature = signed["receipt"], signed.get("signature")
    if not isinstance(signature, str):
        return False
    for jwk in jwks:
        if jwk.get("kid") == receipt.get("kid") and jwk.get("crv") == "Ed25519":
            try:
                Ed25519PublicKey.from_public_bytes(unb64u(jwk["x"])).verify(unb64u(signature), canonical(receipt))
            except (InvalidSignature, ValueError, KeyError):
                return False
            return True
    return False
