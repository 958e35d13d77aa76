"""Join tokens: format (the pages decode the payload), signature, expiry, and every way a token can be bad."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.tokens import InvalidToken, TokenSigner, bearer_token

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
    token, claims = signer.issue("iv-1", "candidate", "  Ada   Lovelace ")
    payload_part, sig_part = token.split(".")
    assert "=" not in token
    payload = json.loads(_unb64(payload_part))
    assert payload == {"iid": "iv-1", "pid": claims.participant_id, "role": "candidate", "name": "Ada Lovelace",
                       "exp": int(clock.t) + 600}
    expected_sig = hmac.new(SECRET, payload_part.encode(), hashlib.sha256).digest()
    assert _unb64(sig_part) == expected_sig
    assert signer.verify(token) == claims
    assert claims.speaker.to_dict() == {"role": "candidate", "name": "Ada Lovelace",
                                        "participantId": claims.participant_id}


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
    payload_part, sig_part = token.split(".")
    # Same payload, promoted to interviewer, re-encoded: the signature no longer matches.
    payload = json.loads(_unb64(payload_part))
    payload["role"] = "interviewer"
    with pytest.raises(InvalidToken, match="signature"):
        signer.verify(_b64(json.dumps(payload).encode()) + "." + sig_part)
    # Signed with another key.
    other, _ = TokenSigner(b"another-secret-of-enough-length!").issue("iv", "interviewer", "Eve")
    with pytest.raises(InvalidToken, match="signature"):
        signer.verify(other)
    # A flipped signature character.
    flipped = sig_part[:-1] + ("A" if sig_part[-1] != "A" else "B")
    with pytest.raises(InvalidToken):
        signer.verify(payload_part + "." + flipped)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "....", "not base64!.xx", "eyJ9." + "A" * 43,
                                   "x" * 5000])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        TokenSigner(SECRET).verify(token)


def test_correctly_signed_garbage_is_still_refused() -> None:
    """A payload we would never issue (bad role, missing fields, not an object) fails even with a valid MAC."""
    signer = TokenSigner(SECRET)
    for payload in ([1, 2], {"iid": "iv", "pid": "p", "role": "admin", "name": "x", "exp": 2**40},
                    {"iid": "iv", "role": "candidate", "name": "x", "exp": 2**40},
                    {"iid": "iv", "pid": "p", "role": "candidate", "name": "x", "exp": "never"}):
        encoded = _b64(json.dumps(payload).encode())
        sig = _b64(hmac.new(SECRET, encoded.encode(), hashlib.sha256).digest())
        with pytest.raises(InvalidToken, match="malformed"):
            signer.verify(f"{encoded}.{sig}")


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
