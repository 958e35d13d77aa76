"""Join tokens: the JWT form (the pages decode the payload), signature, expiry, revocation, and every way a token
can be bad."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.tokens import InvalidToken, Revocations, TokenSigner, bearer_token

SECRET = b"0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_round_trip_and_wire_format() -> None:
    clock = Clock()
    signer = TokenSigner(SECRET, ttl_s=600, clock=clock)
    token, claims = signer.issue("iv-1", "candidate", "  Ada   Lovelace ", org_id="org-a")
    header_part, payload_part, sig_part = token.split(".")
    assert "=" not in token
    assert json.loads(_unb64(header_part)) == {"alg": "HS256", "typ": "JWT", "kid": "join"}
    payload = json.loads(_unb64(payload_part))  # what adapters/static/call.js decodeToken reads
    assert payload == {"iid": "iv-1", "pid": claims.participant_id, "role": "candidate", "name": "Ada Lovelace",
                       "exp": int(clock.t) + 600, "iat": int(clock.t), "jti": claims.token_id, "org": "org-a",
                       "aud": "join"}
    expected_sig = hmac.new(SECRET, f"{header_part}.{payload_part}".encode(), hashlib.sha256).digest()
    assert _unb64(sig_part) == expected_sig
    assert signer.verify(token) == claims
    assert claims.speaker.to_dict() == {"role": "candidate", "name": "Ada Lovelace",
                                        "participantId": claims.participant_id}
    assert len({signer.issue("iv-1", "candidate", "A")[1].token_id for _ in range(50)}) == 50


async def test_revoked_tokens_are_refused_and_announced() -> None:
    signer = TokenSigner(SECRET, revocations=Revocations())
    token, claims = signer.issue("iv", "candidate", "Cat")
    other, _ = signer.issue("iv", "interviewer", "Ivy")
    heard: list[tuple[str, str | None]] = []

    async def listener(iid: str, jti: str | None) -> None:
        heard.append((iid, jti))

    signer.revocations.listeners.append(listener)
    await signer.revocations.revoke("iv", claims.token_id, signer.expiry_bound())
    with pytest.raises(InvalidToken, match="revoked"):
        signer.verify(token)
    assert signer.verify(token, allow_expired=True) == claims  # leaving still works
    signer.verify(other)  # only that token
    await signer.revocations.revoke("other-interview", claims.token_id, signer.expiry_bound())
    await signer.revocations.revoke("iv", None, signer.expiry_bound())  # the interview is cancelled
    with pytest.raises(InvalidToken, match="revoked"):
        signer.verify(other)
    assert heard == [("iv", claims.token_id), ("other-interview", claims.token_id), ("iv", None)]


def test_access_tokens_are_not_join_tokens() -> None:
    signer = TokenSigner(SECRET)
    forged = jwt.encode({"iid": "iv", "pid": "p", "role": "interviewer", "name": "x", "exp": 2**40, "jti": "j",
                         "aud": "api"}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="malformed"):
        signer.verify(forged)


def test_participant_ids_are_unique_and_store_safe() -> None:
    signer = TokenSigner(SECRET)
    ids = {signer.issue("iv", "observer", "O")[1].participant_id for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) <= 64 and all(c.isalnum() or c in "_-" for c in i) for i in ids)


def test_expired_token_is_refused_but_can_still_leave() -> None:
    clock = Clock()
    signer = TokenSigner(SECRET, ttl_s=60, clock=clock)
    token, claims = signer.issue("iv", "interviewer", "Ivy")
    clock.t += 60
    with pytest.raises(InvalidToken, match="expired"):
        signer.verify(token)
    assert signer.verify(token, allow_expired=True) == claims


def test_forged_tokens_are_refused() -> None:
    signer = TokenSigner(SECRET)
    token, _ = signer.issue("iv", "candidate", "Cat")
    header_part, payload_part, sig_part = token.split(".")
    # Same payload, promoted to interviewer, re-encoded: the signature no longer matches.
    payload = json.loads(_unb64(payload_part))
    payload["role"] = "interviewer"
    with pytest.raises(InvalidToken, match="signature"):
        signer.verify(f"{header_part}.{_b64(json.dumps(payload).encode())}.{sig_part}")
    # Signed with another key.
    other, _ = TokenSigner(b"another-secret-of-enough-length!").issue("iv", "interviewer", "Eve")
    with pytest.raises(InvalidToken, match="signature"):
        signer.verify(other)
    # A flipped signature character; no signature at all ("alg": "none").
    flipped = sig_part[:-1] + ("A" if sig_part[-1] != "A" else "B")
    with pytest.raises(InvalidToken):
        signer.verify(f"{header_part}.{payload_part}.{flipped}")
    unsigned = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    with pytest.raises(InvalidToken):
        signer.verify(f"{unsigned}.{payload_part}.")


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "....", "not base64!.xx.yy", "eyJ9." + "A" * 43 + ".x",
                                   "x" * 5000])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        TokenSigner(SECRET).verify(token)


def test_correctly_signed_garbage_is_still_refused() -> None:
    """A payload we would never issue (bad role, missing fields, not an object) fails even with a valid MAC."""
    signer = TokenSigner(SECRET)
    base = {"iid": "iv", "pid": "p", "jti": "j", "aud": "join"}
    for payload in ({**base, "role": "admin", "name": "x", "exp": 2**40},
                    {"iid": "iv", "jti": "j", "aud": "join", "role": "candidate", "name": "x", "exp": 2**40},
                    {**base, "role": "candidate", "name": "x", "exp": "never"},
                    {**base, "role": "candidate", "name": "", "exp": 2**40}):
        with pytest.raises(InvalidToken, match="malformed"):
            signer.verify(jwt.encode(payload, SECRET, algorithm="HS256"))


@given(st.text(max_size=300))
def test_arbitrary_strings_never_verify_nor_crash(text: str) -> None:
    with pytest.raises(InvalidToken):
        TokenSigner(SECRET).verify(text)


@pytest.mark.parametrize(("role", "name"), [("admin", "x"), ("candidate", ""), ("candidate", "   "),
                                            ("candidate", "x" * 101), ("candidate", 5), ("candidate", "a\x00b")])
def test_issue_validates_role_and_name(role: object, name: object) -> None:
    with pytest.raises(ValueError):
        TokenSigner(SECRET).issue("iv", role, name)  # type: ignore[arg-type]


def test_weak_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        TokenSigner(b"short")


@pytest.mark.parametrize(("header", "ok"), [("Bearer abc.def", True), ("bearer  abc.def ", True), (None, False),
                                            ("", False), ("Basic abc", False), ("Bearer", False),
                                            ("Bearer   ", False)])
def test_bearer_header_parsing(header: str | None, ok: bool) -> None:
    if ok:
        assert bearer_token(header) == "abc.def"
    else:
        with pytest.raises(InvalidToken):
            bearer_token(header)
