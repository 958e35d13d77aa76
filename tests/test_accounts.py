"""People and access through the HTTP API (in-process over nx-27017, and a live server for WHIP, TLS and the CLI):
logins, refresh rotation and reuse, access tokens, API keys, key rotation, limits, join token revocation."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters.auth import KeyRing, sha256
from adapters.mongo import MongoStore
from adapters.rate_limits import Rates
from domain.commands import InterviewService
from server import create_app
from testing.api import ADMIN_KEY, InProcessApi, api_app
from testing.fakes import AuditEntry, MemoryAuditLog
from testing.live_server import live_server, test_settings
from testing.net import serve
from testing.whip_client import WavChannelTrack, WhipError, whip_publish

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery staple"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CSRF = {"X-Requested-With": "fetch"}
INVALID_TOKEN = 'Bearer error="invalid_token"'


@pytest.fixture
async def setup(store: MongoStore, service: InterviewService, tmp_path: Path) -> InProcessApi:
    return await api_app(store, service, tmp_path, audit=MemoryAuditLog(), entry_type=AuditEntry,
                         rates=Rates(login_account="3/minute", login_address="100/minute", api_key="1000/minute"))


@pytest.fixture
async def client(setup: InProcessApi) -> AsyncIterator[httpx.AsyncClient]:
    # https: the refresh cookie is Secure, and a cookie jar sends it over HTTPS only
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=setup.app, client=("203.0.113.7", 4000)),
                                 base_url="https://api.test") as c:
        yield c


async def add_user(client: httpx.AsyncClient, email: str, role: str = "interviewer") -> str:
    r = await client.post("/api/users", headers=ADMIN, json={"email": email, "role": role, "name": email.split("@")[0],
                                                             "password": PASSWORD})
    assert r.status_code == 201, r.text
    return str(r.json()["userId"])


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


async def test_login_me_and_the_refresh_cookie(client: httpx.AsyncClient, setup: InProcessApi) -> None:
    uid = await add_user(client, "Ivy@Example.com", "hr")
    r = await login(client, "ivy@example.com")
    assert r.status_code == 200
    body = r.json()
    assert body["tokenType"] == "Bearer" and body["expiresIn"] == 900
    header = jwt.get_unverified_header(body["accessToken"])
    assert header["alg"] == "HS256" and header["kid"]
    cookie = r.headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/api/auth"):
        assert attribute.lower() in cookie.lower(), cookie
    me = await client.get("/api/me", headers={"Authorization": f"Bearer {body['accessToken']}"})
    assert me.json() == {"userId": uid, "email": "ivy@example.com", "name": "Ivy", "role": "hr", "orgId": "default"}
    # Stored hashed: the database holds argon2id, never the password.
    doc = await setup.accounts.store.users.find_one({"_id": uid})
    assert doc["passwordHash"].startswith("$argon2id$") and PASSWORD not in json.dumps(doc, default=str)


async def test_wrong_password_and_unknown_user_get_the_same_401_then_429(client: httpx.AsyncClient,
                                                                          setup: InProcessApi) -> None:
    await add_user(client, "ada@example.com")
    wrong = await login(client, "ada@example.com", "not the password")
    unknown = await login(client, "nobody@example.com", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"error": {"code": "invalid_credentials",
                                                        "message": "wrong email or password"}}
    await login(client, "ada@example.com", "still not it")
    await login(client, "ada@example.com", "and again not")
    # The account's failure budget (3/minute) is spent: locked, even with the right password, with Retry-After.
    locked = await login(client, "ada@example.com")
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    assert locked.json()["error"]["code"] == "too_many_attempts"
    # Unknown accounts lock alike: no enumeration through the 429 either.
    for _ in range(2):
        await login(client, "nobody@example.com", "x")
    assert (await login(client, "nobody@example.com", "x")).status_code == 429
    # Every attempt is in the audit trail, failures with the email tried.
    audit = setup.api.audit.sink
    assert isinstance(audit, MemoryAuditLog)
    logins = [e for e in audit.entries if e.action == "login"]
    assert len(logins) == 8 and {e.outcome for e in logins} == {"failed"}
    assert logins[0].address == "203.0.113.7" and logins[0].detail == {"status": 401, "email": "ada@example.com"}


async def test_expired_and_tampered_access_tokens_are_invalid_token(client: httpx.AsyncClient,
                                                                    setup: InProcessApi) -> None:
    uid = await add_user(client, "hal@example.com", "hr")
    token = (await login(client, "hal@example.com")).json()["accessToken"]
    kid, key = setup.accounts.access.ring.signing_key()
    now = int(time.time())
    expired = jwt.encode({"sub": uid, "org": "default", "role": "hr", "iat": now - 1000, "exp": now - 100,
                          "aud": "api"}, key, algorithm="HS256", headers={"kid": kid})
    header, payload, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    promoted = jwt.utils.base64url_encode(json.dumps({**claims, "role": "admin"}).encode()).decode()
    forged = jwt.encode({**claims, "role": "admin"}, "not-our-key-but-long-enough-for-hs256", algorithm="HS256",
                        headers={"kid": kid})
    for bad in (expired, f"{header}.{promoted}.{signature}", forged, token[:-4], "a.b.c"):
        r = await client.get("/api/interviews", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, bad
        assert r.headers["www-authenticate"] == INVALID_TOKEN and r.json()["error"]["code"] == "invalid_token"
    assert (await client.get("/api/interviews", headers={"Authorization": f"Bearer {token}"})).status_code == 200


async def test_refresh_rotates_and_reuse_revokes_the_family(client: httpx.AsyncClient) -> None:
    await add_user(client, "rex@example.com")
    await login(client, "rex@example.com")
    first = client.cookies["iw_refresh"]
    assert (await client.post("/api/auth/refresh")).status_code == 403  # no CSRF header
    r = await client.post("/api/auth/refresh", headers=CSRF)
    assert r.status_code == 200 and r.json()["accessToken"]
    second = client.cookies["iw_refresh"]
    assert second != first
    # The rotated token comes back (stolen, or replayed): refused, and the whole family with it.
    client.cookies.set("iw_refresh", first, domain="api.test", path="/api/auth")
    reused = await client.post("/api/auth/refresh", headers=CSRF)
    assert reused.status_code == 401 and reused.json()["error"]["code"] == "refresh_token_reused"
    client.cookies.set("iw_refresh", second, domain="api.test", path="/api/auth")
    ended = await client.post("/api/auth/refresh", headers=CSRF)  # the owner's: its session ended with the family
    assert ended.status_code == 401 and ended.json()["error"]["code"] == "refresh_token_revoked"
    # A fresh login works again; logout ends it.
    await login(client, "rex@example.com")
    assert (await client.post("/api/auth/logout", headers=CSRF)).json() == {"loggedOut": True}
    assert "iw_refresh" not in client.cookies
    assert (await client.post("/api/auth/refresh", headers=CSRF)).status_code == 401


async def test_a_refresh_after_logout_says_the_session_ended_and_a_replay_is_still_a_reuse(
        client: httpx.AsyncClient) -> None:
    await add_user(client, "lou@example.com")
    await login(client, "lou@example.com")
    rotated = client.cookies["iw_refresh"]
    assert (await client.post("/api/auth/refresh", headers=CSRF)).status_code == 200
    current = client.cookies["iw_refresh"]
    assert (await client.post("/api/auth/logout", headers=CSRF)).status_code == 200
    # a tab that still holds the cookie: told its session was logged out, not that a token was stolen
    client.cookies.set("iw_refresh", current, domain="api.test", path="/api/auth")
    ended = await client.post("/api/auth/refresh", headers=CSRF)
    assert ended.status_code == 401 and ended.json()["error"] == {
        "code": "refresh_token_revoked", "message": "this session has ended (logged out or revoked); log in again"}
    # a token that was already rotated, presented again: a replay, whether or not its session has ended
    client.cookies.set("iw_refresh", rotated, domain="api.test", path="/api/auth")
    replayed = await client.post("/api/auth/refresh", headers=CSRF)
    assert replayed.status_code == 401 and replayed.json()["error"]["code"] == "refresh_token_reused"
    # another login is a new family: untouched by either
    await login(client, "lou@example.com")
    assert (await client.post("/api/auth/refresh", headers=CSRF)).status_code == 200


async def test_disabled_users_cannot_log_in_or_refresh(client: httpx.AsyncClient) -> None:
    uid = await add_user(client, "dan@example.com")
    await login(client, "dan@example.com")
    assert (await client.delete(f"/api/users/{uid}", headers=ADMIN)).json() == {"userId": uid, "disabled": True}
    assert (await client.post("/api/auth/refresh", headers=CSRF)).status_code == 401
    assert (await login(client, "dan@example.com")).status_code == 401
    users = (await client.get("/api/users", headers=ADMIN)).json()["items"]
    assert [u["disabled"] for u in users if u["userId"] == uid] == [True]


async def test_api_keys_are_shown_once_stored_hashed_scoped_and_revocable(client: httpx.AsyncClient,
                                                                          setup: InProcessApi) -> None:
    r = await client.post("/api/api-keys", headers=ADMIN, json={"name": "ats", "scopes": ["interview.read"]})
    assert r.status_code == 201
    created = r.json()
    key = created["key"]
    assert key.startswith("iwk_") and len(key) > 40
    doc = await setup.accounts.store.api_keys.find_one({"_id": created["keyId"]})
    assert doc["hash"] == sha256(key) and key not in json.dumps(doc, default=str)
    auth = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/api/interviews", headers=auth)).status_code == 200
    assert (await client.post("/api/interviews", headers=auth, json={})).status_code == 403  # no such scope
    listed = (await client.get("/api/api-keys", headers=ADMIN)).json()["items"]
    assert [(k["keyId"], k["revoked"]) for k in listed] == [(created["keyId"], False)]
    assert listed[0]["lastUsedAt"] and "key" not in listed[0]
    assert (await client.delete(f"/api/api-keys/{created['keyId']}", headers=ADMIN)).status_code == 200
    refused = await client.get("/api/interviews", headers=auth)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == INVALID_TOKEN


async def test_organisations_do_not_see_each_other(client: httpx.AsyncClient, setup: InProcessApi) -> None:
    await setup.accounts.create_admin("boss@b.example", "Org B", PASSWORD)
    other = {"Authorization": f"Bearer {(await login(client, 'boss@b.example')).json()['accessToken']}"}
    new = {"candidateId": "cand-1", "jobId": "job-1", "scheduledAt": "2030-01-01T09:00:00Z"}
    ours = (await client.post("/api/interviews", headers=ADMIN, json=new)).json()["interviewId"]
    theirs = await client.post("/api/interviews", headers=other, json=new)
    assert theirs.status_code == 201 and theirs.json()["orgId"] != "default"
    # Another organisation's id answers exactly like an id that does not exist.
    hidden = await client.get(f"/api/interviews/{ours}", headers=other)
    missing = await client.get("/api/interviews/no-such-id", headers=other)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert hidden.json()["error"]["message"] == f"interview {ours!r} not found"
    ask = await client.post(f"/api/interviews/{ours}/questions/q1/ask", headers=other)
    assert ask.status_code == 404 and ask.json() == hidden.json()
    assert [i["interviewId"] for i in (await client.get("/api/interviews", headers=other)).json()["items"]] == \
        [theirs.json()["interviewId"]]
    # Candidate emails are unique per organisation, so a clash does not reveal the other's candidate.
    cand = {"name": "Cam", "email": "cam@example.com"}
    assert (await client.post("/api/candidates", headers=ADMIN, json=cand)).status_code == 201
    assert (await client.post("/api/candidates", headers=other, json=cand)).status_code == 201
    # A role without the action: 403.
    await add_user(client, "ivy@example.com")
    ivy = {"Authorization": f"Bearer {(await login(client, 'ivy@example.com')).json()['accessToken']}"}
    denied = await client.post("/api/users", headers=ivy, json={})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"


async def test_only_active_interviewers_of_the_organisation_are_assigned(client: httpx.AsyncClient,
                                                                        setup: InProcessApi) -> None:
    ivy = await add_user(client, "ivy@example.com")
    hana = await add_user(client, "hana@example.com", "hr")
    gone = await add_user(client, "gone@example.com")
    assert (await client.delete(f"/api/users/{gone}", headers=ADMIN)).status_code == 200
    boss = await setup.accounts.create_admin("boss@b.example", "Org B", PASSWORD)
    other = {"Authorization": f"Bearer {(await login(client, 'boss@b.example')).json()['accessToken']}"}
    foreign = (await client.post("/api/users", headers=other, json={
        "email": "fred@b.example", "role": "interviewer", "name": "Fred", "password": PASSWORD})).json()["userId"]
    new = {"candidateId": "cand-1", "jobId": "job-1", "scheduledAt": "2030-01-01T09:00:00Z"}
    r = await client.post("/api/interviews", headers=ADMIN,
                          json={**new, "interviewers": [ivy, "nobody", hana, foreign, gone, boss.user_id]})
    assert r.status_code == 422
    assert r.json()["error"]["fields"] == {
        "interviewers[1]": "'nobody' is not a user of this organisation",
        "interviewers[2]": f"{hana!r} has the role hr, not interviewer",
        # another organisation's user is answered like an unknown id
        "interviewers[3]": f"{foreign!r} is not a user of this organisation",
        "interviewers[4]": f"{gone!r} is disabled",
        "interviewers[5]": f"{boss.user_id!r} is not a user of this organisation"}
    assert (await client.get("/api/interviews", headers=ADMIN)).json()["items"] == []  # nothing was scheduled
    ok = await client.post("/api/interviews", headers=ADMIN, json={**new, "interviewers": [ivy]})
    assert ok.status_code == 201 and ok.json()["interviewers"] == [ivy]
    # and in the other organisation, its own interviewer is the valid one
    theirs = await client.post("/api/interviews", headers=other, json={**new, "interviewers": [foreign]})
    assert theirs.status_code == 201
    assert (await client.post("/api/interviews", headers=other, json={**new, "interviewers": [ivy]})).status_code == 422


async def test_interviewers_list_and_join_only_their_interviews(client: httpx.AsyncClient) -> None:
    ivy_id = await add_user(client, "ivy@example.com")
    await add_user(client, "una@example.com")
    new = {"candidateId": "cand-1", "jobId": "job-1", "scheduledAt": "2030-01-01T09:00:00Z"}
    mine = (await client.post("/api/interviews", headers=ADMIN, json={**new, "interviewers": [ivy_id]})
            ).json()["interviewId"]
    await client.post("/api/interviews", headers=ADMIN, json=new)
    ivy = {"Authorization": f"Bearer {(await login(client, 'ivy@example.com')).json()['accessToken']}"}
    una = {"Authorization": f"Bearer {(await login(client, 'una@example.com')).json()['accessToken']}"}
    assert [i["interviewId"] for i in (await client.get("/api/interviews", headers=ivy)).json()["items"]] == [mine]
    assert (await client.get("/api/interviews", headers=una)).json()["items"] == []
    joined = await client.post(f"/api/interviews/{mine}/join", headers=ivy)
    assert joined.status_code == 201
    body = joined.json()
    assert body["joinUrl"] == f"https://api.test/interviewer?token={body['token']}"
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert (claims["iid"], claims["role"], claims["name"], claims["pid"]) == (mine, "interviewer", "ivy",
                                                                              f"u_{ivy_id}")
    again = jwt.decode((await client.post(f"/api/interviews/{mine}/join", headers=ivy)).json()["token"],
                       options={"verify_signature": False})
    assert again["pid"] == claims["pid"] and again["jti"] != claims["jti"]  # rejoining resumes the same stream
    assert (await client.post(f"/api/interviews/{mine}/join", headers=una)).status_code == 404


async def test_key_rotation_keeps_sessions(client: httpx.AsyncClient, setup: InProcessApi, tmp_path: Path) -> None:
    await add_user(client, "kim@example.com")
    before = (await login(client, "kim@example.com")).json()["accessToken"]
    old_kid = jwt.get_unverified_header(before)["kid"]
    new_kid = KeyRing.rotate(tmp_path / "jwt_keys.json")
    after = (await login(client, "kim@example.com")).json()["accessToken"]
    assert jwt.get_unverified_header(after)["kid"] == new_kid != old_kid
    for token in (before, after):
        assert (await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    ring = json.loads((tmp_path / "jwt_keys.json").read_text())
    assert ring["current"] == new_kid and len(ring["keys"]) == 2
    assert stat.S_IMODE((tmp_path / "jwt_keys.json").stat().st_mode) == 0o600
    # A key retired longer ago than any token lives is dropped at the next rotation.
    KeyRing.rotate(tmp_path / "jwt_keys.json", now=time.time() + KeyRing.RETIRED_KEEP_S + 1)
    assert old_kid not in {k["kid"] for k in json.loads((tmp_path / "jwt_keys.json").read_text())["keys"]}


async def test_revoked_join_token_ends_the_live_session(tmp_path: Path, mongo_url: str, shared_data: Path) -> None:
    async with live_server(test_settings(tmp_path, mongo_url)) as live:
        iid = await live.create_interview()
        cand = await live.token(iid, "candidate", "Cat")
        viewer_token = (await live.token(iid, "observer", "Obi"))["token"]
        whip = f"{live.url}/whip/{iid}"
        viewer = await whip_publish(whip, viewer_token, track=None, analysis=True)
        session = await whip_publish(whip, cand["token"], track=WavChannelTrack(shared_data / "jfk.flac"))
        async with asyncio.timeout(20):
            await session.wait_connected()
        jti = jwt.decode(cand["token"], options={"verify_signature": False})["jti"]
        r = await live.http.delete(f"/api/interviews/{iid}/tokens/{jti}")
        assert r.json() == {"interviewId": iid, "tokenId": jti, "revoked": True}
        # The server closed the session at once: the viewer hears the candidate leave, and the token is refused.
        async with asyncio.timeout(10):
            while True:
                event = await viewer.events.get()
                if event["type"] == "participant.left" and event["speaker"]["participantId"] == cand["participantId"]:
                    break
        assert not [s for s in live.components.whip.sessions.values() if s.claims.token_id == jti]
        again = await live.http.post(f"/whip/{iid}", content=b"v=0", headers={
            "Authorization": f"Bearer {cand['token']}", "Content-Type": "application/sdp"})
        assert again.status_code == 401 and again.json()["error"]["message"] == "token revoked"
        await session.close()
        await viewer.close()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_https_with_hsts_and_secure_cookies(tmp_path: Path, mongo_url: str) -> None:
    cert, key = _self_signed(tmp_path)
    settings = test_settings(tmp_path, mongo_url, tls_cert_file=cert, tls_key_file=key)
    app = create_app(settings)
    async with serve(app, lifespan="on", ssl_certfile=str(cert), ssl_keyfile=str(key)) as served:
        url = served.url.replace("http://", "https://")
        async with httpx.AsyncClient(base_url=url, verify=ssl.create_default_context(cafile=str(cert))) as https:
            r = await https.get("/healthz")
            assert r.status_code == 200 and r.headers["strict-transport-security"] == "max-age=31536000"
            accounts = app.state.components.accounts
            await accounts.create_admin("root@example.com", "default", PASSWORD)
            r = await https.post("/api/auth/login", json={"email": "root@example.com", "password": PASSWORD})
            assert r.status_code == 200 and "secure" in r.headers["set-cookie"].lower()
        async with httpx.AsyncClient(base_url=served.url) as plain:  # no plain HTTP on the TLS port
            with pytest.raises(httpx.HTTPError):
                await plain.get("/healthz")
    with pytest.raises(ValueError, match="TLS_CERT_FILE"):
        type(settings).from_env({"TLS_CERT_FILE": str(cert)})


def _cli(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "server.py", *args], cwd=ROOT, env={**os.environ, **env}, input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_create_admin_and_rotate_key_commands(tmp_path: Path, mongo_url: str) -> None:
    env = {"DATA_DIR": str(tmp_path / "data"), "MONGODB_URL": mongo_url, "MONGODB_DB": "cli_" + os.urandom(6).hex(),
           "ADMIN_API_KEY": ADMIN_KEY}
    help_text = _cli(["--help"], env).stdout
    assert "create-admin" in help_text and "rotate-jwt-key" in help_text
    made = await asyncio.to_thread(_cli, ["create-admin", "root@example.com", "--org", "Acme"], env, PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    user_id = made.stdout.strip()
    assert len(user_id) == 32 and PASSWORD not in made.stdout + made.stderr
    weak = await asyncio.to_thread(_cli, ["create-admin", "two@example.com"], env, "short\n")
    assert weak.returncode == 2 and "password" in weak.stderr
    rotated = await asyncio.to_thread(_cli, ["rotate-jwt-key"], env)
    assert rotated.returncode == 0, rotated.stderr
    ring = json.loads((tmp_path / "data" / "jwt_keys.json").read_text())
    assert len(ring["keys"]) == 2 and ring["current"] in rotated.stdout  # the first came with create-admin
    settings = test_settings(tmp_path, mongo_url, mongodb_db=env["MONGODB_DB"])
    async with live_server(settings) as live:
        r = await live.http.post("/api/auth/login", json={"email": "root@example.com", "password": PASSWORD})
        assert r.status_code == 200
        me = await live.http.get("/api/me", headers={"Authorization": f"Bearer {r.json()['accessToken']}"})
        body: dict[str, Any] = me.json()
        assert body["userId"] == user_id and body["role"] == "admin" and body["orgId"].startswith("org_")
        assert jwt.get_unverified_header(r.json()["accessToken"])["kid"] == ring["current"]


async def test_minting_and_api_keys_are_rate_limited(store: MongoStore, service: InterviewService,
                                                     tmp_path: Path) -> None:
    setup = await api_app(store, service, tmp_path, rates=Rates(token_mint="2/minute", api_key="5/minute"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=setup.app), base_url="https://api.test") as c:
        key = (await c.post("/api/api-keys", headers=ADMIN, json={"name": "k", "scopes": ["admin"]})).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        iid = (await c.post("/api/interviews", headers=auth, json={
            "candidateId": "c", "jobId": "j", "scheduledAt": "2030-01-01T09:00:00Z"})).json()["interviewId"]
        minted = [await c.post(f"/api/interviews/{iid}/tokens", headers=auth, json={"role": "candidate"})
                  for _ in range(3)]
        assert [r.status_code for r in minted] == [201, 201, 429]
        assert "join tokens" in minted[2].json()["error"]["message"]
        assert (await c.get("/api/interviews", headers=auth)).status_code == 200  # the key's 5th request
        over = await c.get("/api/interviews", headers=auth)
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        assert over.json()["error"]["code"] == "too_many_requests"


async def test_whip_limits_joins_per_token_and_caps_rooms_and_connections(tmp_path: Path, mongo_url: str) -> None:
    settings = test_settings(tmp_path, mongo_url, whip_join_limit="1/minute", max_rooms_per_org=1,
                             max_peer_connections=2)
    async with live_server(settings) as live:
        first, second = await live.create_interview(), await live.create_interview()
        token = (await live.token(first, "observer", "Obi"))["token"]
        sdp = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
        assert (await live.http.post(f"/whip/{first}", content=b"v=0", headers=sdp)).status_code == 400
        again = await live.http.post(f"/whip/{first}", content=b"v=0", headers=sdp)
        assert again.status_code == 429 and int(again.headers["retry-after"]) >= 1
        sessions = [await whip_publish(f"{live.url}/whip/{first}", (await live.token(first, "observer", "O1"))["token"],
                                       track=None, analysis=True)]
        with pytest.raises(WhipError) as full:  # the organisation's one room is in use
            await whip_publish(f"{live.url}/whip/{second}", (await live.token(second, "observer", "O2"))["token"],
                               track=None, analysis=True)
        assert full.value.status == 503 and "too_many_rooms" in full.value.body
        sessions.append(await whip_publish(f"{live.url}/whip/{first}",
                                           (await live.token(first, "observer", "O3"))["token"], track=None,
                                           analysis=True))
        with pytest.raises(WhipError) as busy:  # the process holds its two peer connections
            await whip_publish(f"{live.url}/whip/{first}", (await live.token(first, "observer", "O4"))["token"],
                               track=None, analysis=True)
        assert busy.value.status == 503 and "at_capacity" in busy.value.body
        for session in sessions:
            await session.close()


async def test_rate_limits_in_redis_are_shared(tmp_path: Path) -> None:
    import redis.asyncio

    from adapters.rate_limits import RateLimits

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    client = redis.asyncio.from_url(url)
    try:
        await client.ping()
    except redis.ConnectionError:
        if os.environ.get("CI"):
            raise
        pytest.skip("no Redis at " + url)
    finally:
        await client.aclose()
    one, two = (RateLimits(Rates(login_address="2/minute"), url) for _ in range(2))
    address = "198.51.100." + os.urandom(2).hex()
    assert await one.hit("login_address", address) is None
    assert await two.hit("login_address", address) is None
    retry = await one.hit("login_address", address)
    assert retry is not None and retry >= 1  # the second limiter's hit counted for the first
    for limiter in (one, two):
        await limiter.aclose()


async def test_documents_from_before_organisations_belong_to_the_default_one(store: MongoStore,
                                                                           service: InterviewService) -> None:
    from domain.commands import CreateInterview, InterviewQuery

    doc = await service.create_interview(CreateInterview.parse(
        {"candidateId": "c", "jobId": "j", "scheduledAt": "2030-01-01T09:00:00Z"}))
    await store.interviews.update_one({"_id": doc["interviewId"]}, {"$unset": {"orgId": ""}})
    assert "orgId" not in await store.interviews.find_one({"_id": doc["interviewId"]})
    await store.create_indexes()  # what every start runs
    listed = await service.list_interviews(InterviewQuery(org_id="default"))
    assert [i["interviewId"] for i in listed["items"]] == [doc["interviewId"]]
    assert (await service.list_interviews(InterviewQuery(org_id="org-b")))["items"] == []


async def test_the_setup_link_makes_the_first_admin_once(client: httpx.AsyncClient, setup: InProcessApi) -> None:
    accounts = setup.accounts
    token = await accounts.open_setup()
    assert token is not None and len(token) >= 40
    # hashed at rest: the store holds its SHA-256 and an expiry, never the token
    docs = await accounts.store.setup_tokens.find({}).to_list(None)
    assert [d["_id"] for d in docs] == [sha256(token)] and token not in json.dumps(docs, default=str)
    assert docs[0]["expiresAt"] - time.time() == pytest.approx(24 * 3600, abs=60)
    # a second start without users replaces it: only the newest link works
    stale, token = token, await accounts.open_setup()
    assert token is not None and token != stale
    body = {"token": token, "email": "Ada@Example.com", "name": "Ada", "password": PASSWORD}
    r = await client.post("/api/auth/setup", json={**body, "token": stale})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # bad fields are a 422 and do not use the link up
    r = await client.post("/api/auth/setup", json={**body, "email": "nope", "password": "short"})
    assert r.status_code == 422 and set(r.json()["error"]["fields"]) == {"email", "password"}
    r = await client.post("/api/auth/setup", json=body)
    assert r.status_code == 201
    admin_id = r.json()["userId"]
    me = await client.get("/api/me", headers={
        "Authorization": f"Bearer {(await login(client, 'ada@example.com')).json()['accessToken']}"})
    assert me.json() == {"userId": admin_id, "email": "ada@example.com", "name": "Ada", "role": "admin",
                         "orgId": "default"}
    # single use: the same link again is gone, and so is any link once an admin exists
    r = await client.post("/api/auth/setup", json={**body, "email": "eve@example.com"})
    assert r.status_code == 410 and r.json()["error"]["code"] == "setup_done"
    await setup.accounts.store.users.delete_many({})  # even with the admin gone, the used link stays used
    r = await client.post("/api/auth/setup", json={**body, "email": "eve@example.com"})
    assert r.status_code == 410 and r.json()["error"]["code"] == "setup_used"
    # with users, a start mints none and drops what is left
    await add_user(client, "ivy@example.com")
    assert await accounts.open_setup() is None
    assert await accounts.store.setup_tokens.count_documents({}) == 0


async def test_an_expired_setup_link_is_gone(client: httpx.AsyncClient, setup: InProcessApi) -> None:
    token = "t" * 43
    await setup.accounts.store.replace_setup_token(sha256(token), time.time() - 1)
    r = await client.post("/api/auth/setup", json={"token": token, "email": "ada@example.com", "password": PASSWORD})
    assert r.status_code == 410 and r.json()["error"]["code"] == "setup_expired"
    assert (await client.get("/api/users", headers=ADMIN)).json()["items"] == []
