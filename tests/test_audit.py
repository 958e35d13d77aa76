"""The audit trail against nx-27017: what is recorded is what is written (through an outage too), the hash chain
finds removed, edited, reordered and cut-off entries, `server.py verify-audit` says so, and the service records
API requests and WHIP joins and leaves."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.audit import AuditEntry, AuditLog, _spill_line, move_trail
from adapters.metrics import Metrics
from adapters.mongo import EmbeddedMongo, MongoStore
from testing.live_server import live_server, test_settings
from testing.net import free_port
from testing.whip_client import whip_publish

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, 9, 0, 0, 123000, tzinfo=UTC)


def entry(i: int, *, org: str = "org-a", actor: str | None = None, resource: str | None = None,
          at: datetime | None = None, outcome: str = "ok") -> AuditEntry:
    return AuditEntry(actor_type="user", actor_id=actor or f"user-{i % 3}", role="hr", org_id=org,
                      action="get_transcript", resource_type="interview", resource_id=resource or f"iv-{i % 5}",
                      outcome=outcome, address="192.0.2.7", user_agent="pytest",
                      at=at or T0 + timedelta(milliseconds=i), detail={"status": 200, "n": i})


def as_recorded(doc: dict[str, Any]) -> AuditEntry:
    """A stored entry back as the AuditEntry it was written from."""
    return AuditEntry(actor_type=doc["actorType"], actor_id=doc["actorId"], role=doc["role"], org_id=doc["orgId"],
                      action=doc["action"], resource_type=doc["resourceType"], resource_id=doc["resourceId"],
                      outcome=doc["outcome"], address=doc["address"], user_agent=doc["userAgent"],
                      at=datetime.fromisoformat(doc["at"]), detail=doc["detail"])


async def all_pages(audit: AuditLog, **filters: Any) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    cursor = None
    while True:
        page, cursor = await audit.query(cursor=cursor, **filters)
        docs += page
        if cursor is None:
            return docs


async def until(audit: AuditLog, condition: Callable[[AuditLog], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        await audit.wait_until(condition)


async def test_entries_written_are_the_entries_recorded_newest_first_in_pages(store: MongoStore) -> None:
    audit = AuditLog(store.db, batch_size=50)
    await audit.start()
    recorded = [entry(i, org="org-a" if i % 4 else "org-b") for i in range(450)]
    for e in recorded:
        audit.record(e)
    await audit.aclose()
    for org in ("org-a", "org-b"):
        docs = await all_pages(audit, org_id=org, limit=40)
        assert [as_recorded(d) for d in reversed(docs)] == [e for e in recorded if e.org_id == org]
        assert [d["seq"] for d in docs] == list(range(len(docs), 0, -1))  # one chain per organisation
    result = await audit.verify()
    assert (result.ok, result.entries, result.first_bad) == (True, 450, None), result.reason
    assert (await audit.verify("org-b")).entries == 450 // 4 + 1
    assert {d["_id"]: d["seq"] async for d in audit.heads.find()} == {"org-a": 450 - 113, "org-b": 113}


async def heads_of(audit: AuditLog) -> dict[str, int]:
    return {d["_id"]: d["seq"] async for d in audit.heads.find()}


async def test_chain_heads_are_saved_once_per_interval_and_when_the_writer_idles_or_stops(store: MongoStore) -> None:
    audit = AuditLog(store.db, batch_size=10, heads_interval_s=60.0)
    await audit.start()
    for i in range(10):
        audit.record(entry(i))
    await audit.flush()
    assert await heads_of(audit) == {"org-a": 10}  # the first batch saves them
    for i in range(10, 35):
        audit.record(entry(i, org="org-a" if i % 5 else "org-b"))
    await audit.flush()
    assert (audit.written, audit.batches) == (35, 4)
    assert await heads_of(audit) == {"org-a": 10}  # not again within the interval
    await audit.aclose()
    assert await heads_of(audit) == {"org-a": 30, "org-b": 5}  # and at the end, every chain written to
    assert (await audit.verify()).ok

    # the first batch saves them at once, the second (within the interval) does not: the writer, idle, does
    idle = AuditLog(store.db, batch_size=5, heads_interval_s=0.5)
    await idle.start()
    for i in range(35, 45):
        idle.record(entry(i))
    await idle.flush()
    await until(idle, lambda a: a.heads_unsaved == 0)
    assert await heads_of(idle) == {"org-a": 40, "org-b": 5}
    assert idle.written == idle.batches * 5 == 10
    await idle.aclose()
    assert (await idle.verify()).ok


def heads_not_saved(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "chain heads not saved" in r.getMessage()]


async def two_batches(audit: AuditLog) -> None:
    """Starts `audit` and writes entries 0-9 (their head saved at once, as the first batch's) then 10-19."""
    await audit.start()
    for i in range(10):
        audit.record(entry(i))
    await audit.flush()
    for i in range(10, 20):
        audit.record(entry(i))
    await audit.flush()


async def test_a_chain_heads_save_that_fails_is_a_warning_and_retried_once_the_store_is_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The store goes down after a write, before its chain head is saved: the entries stay written, the failed save
    is said once as a warning (nothing is lost yet) and the next save, once the store is back, stores the head."""
    embedded = EmbeddedMongo(tmp_path, port=free_port())
    store = await MongoStore.connect(await embedded.start(), timeout_s=0.5)
    # 5 s: time for the store to stop before the idle save is due (~0.1 s, seconds on a starved machine), and to
    # start before its retry (~0.3 s)
    audit = AuditLog(store.db, flush_interval_s=0.05, heads_interval_s=5.0)
    try:
        await two_batches(audit)  # the second one's head is saved when the writer idles, within the interval
        with caplog.at_level(logging.WARNING, logger="adapters.audit"):
            await embedded.stop()
            assert audit.heads_unsaved == 1, "the idle save was due before the store stopped"
            await until(audit, lambda a: bool(heads_not_saved(caplog)))
            await embedded.start()  # the same port: the client reconnects
            await until(audit, lambda a: a.heads_unsaved == 0)
        said = heads_not_saved(caplog)
        assert [r.levelno for r in said] == [logging.WARNING] and "retried within 5 s" in said[0].getMessage()
        assert await heads_of(audit) == {"org-a": 20}
        docs = await all_pages(audit, org_id="org-a")
        assert [as_recorded(d) for d in reversed(docs)] == [entry(i) for i in range(20)]
        assert (await audit.verify()).ok
        await audit.aclose()
    finally:
        await store.close()
        await embedded.stop()


async def test_chain_heads_not_saved_at_shutdown_are_an_error_and_the_next_start_saves_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """At shutdown the heads save is the last chance (an end cut before the next start would go unnoticed): a
    failure is an error, the entries stay written and verify, and the next start's first write saves the head."""
    embedded = EmbeddedMongo(tmp_path, port=free_port())
    store = await MongoStore.connect(await embedded.start(), timeout_s=0.5)
    audit = AuditLog(store.db, flush_interval_s=0.05, heads_interval_s=3600.0)
    try:
        await two_batches(audit)  # the second one's head is not saved again within the hour: at shutdown
        await embedded.stop()
        with caplog.at_level(logging.WARNING, logger="adapters.audit"):
            await audit.aclose()
        said = heads_not_saved(caplog)
        assert [r.levelno for r in said] == [logging.ERROR] and "at shutdown" in said[0].getMessage()
        assert (audit.pending, audit.heads_unsaved) == (0, 1)
        await embedded.start()
        assert await heads_of(audit) == {"org-a": 10}  # behind its chain, which verify accepts
        result = await audit.verify()
        assert (result.ok, result.entries) == (True, 20), result.reason
        following = AuditLog(store.db, flush_interval_s=0.05, heads_interval_s=3600.0)
        await following.start()
        following.record(entry(20))
        await following.flush()
        assert await heads_of(following) == {"org-a": 21}
        await following.aclose()
        docs = await all_pages(following, org_id="org-a")
        assert [as_recorded(d) for d in reversed(docs)] == [entry(i) for i in range(21)]
        assert (await following.verify()).ok
    finally:
        await store.close()
        await embedded.stop()


async def test_query_filters_by_actor_resource_and_time_to_the_millisecond(store: MongoStore) -> None:
    audit = AuditLog(store.db)
    await audit.start()
    for i in range(30):
        audit.record(entry(i))
    audit.record(entry(99, org="org-other", actor="user-1", resource="iv-1"))
    await audit.aclose()

    by_actor = await all_pages(audit, org_id="org-a", actor="user-1", limit=3)
    assert [d["detail"]["n"] for d in by_actor] == [i for i in range(29, -1, -1) if i % 3 == 1]
    by_both = await all_pages(audit, org_id="org-a", actor="user-1", resource="iv-1")
    assert [d["detail"]["n"] for d in by_both] == [16, 1]
    # 5 entries 1 ms apart inside one second: nx-27017 compares dates to the second, the filter must not
    window = await all_pages(audit, org_id="org-a", start=T0 + timedelta(milliseconds=10),
                             end=T0 + timedelta(milliseconds=15))
    assert [d["detail"]["n"] for d in window] == [14, 13, 12, 11, 10]
    assert [d["at"] for d in window][-1] == "2026-03-01T09:00:00.133Z"
    for bad in ({"cursor": "abc"}, {"cursor": "-1"}, {"limit": 0}, {"limit": 201},
                {"start": datetime(2026, 1, 1)}):  # noqa: DTZ001 - a naive time is the bad input here
        with pytest.raises(ValueError):
            await audit.query(org_id="org-a", **bad)


async def _delete(audit: AuditLog) -> None:
    await audit.entries.delete_one({"orgId": "org-a", "seq": 4})


async def _edit(audit: AuditLog) -> None:
    await audit.entries.update_one({"orgId": "org-a", "seq": 4}, {"$set": {"outcome": "denied"}})


async def _edit_detail(audit: AuditLog) -> None:
    await audit.entries.update_one({"orgId": "org-a", "seq": 4}, {"$set": {"detail.status": 403}})


async def _swap(audit: AuditLog) -> None:
    # the two entries keep their own hashes and trade places
    a = await audit.entries.find_one({"orgId": "org-a", "seq": 4})
    b = await audit.entries.find_one({"orgId": "org-a", "seq": 5})
    assert a is not None and b is not None
    await audit.entries.update_one({"_id": a["_id"]}, {"$set": {"seq": -1}})
    await audit.entries.update_one({"_id": b["_id"]}, {"$set": {"seq": 4}})
    await audit.entries.update_one({"_id": a["_id"]}, {"$set": {"seq": 5}})


async def _rehash(audit: AuditLog) -> None:
    # edited with its own hash recomputed: the next entry no longer follows it
    from adapters.audit import entry_hash

    doc = await audit.entries.find_one({"orgId": "org-a", "seq": 4})
    assert doc is not None
    doc["actorId"] = "someone-else"
    await audit.entries.update_one({"_id": doc["_id"]}, {"$set": {"actorId": "someone-else",
                                                                    "hash": entry_hash(doc)}})


async def _cut_tail(audit: AuditLog) -> None:
    await audit.entries.delete_many({"orgId": "org-a", "seq": {"$gte": 7}})


@pytest.mark.parametrize(("tamper", "first_bad", "why"), [
    (_delete, 4, "expected seq 4, found 5"), (_edit, 4, "changed after it was written"),
    (_edit_detail, 4, "changed after it was written"), (_swap, 4, "does not follow"),
    (_rehash, 5, "does not follow"), (_cut_tail, 7, "entries 7 to 8 are missing"),
])
async def test_verify_finds_a_removed_edited_or_reordered_entry(
        store: MongoStore, tamper: Callable[[AuditLog], Awaitable[None]], first_bad: int, why: str) -> None:
    audit = AuditLog(store.db)
    await audit.start()
    for i in range(8):
        audit.record(entry(i))
        audit.record(entry(i, org="org-b"))
    await audit.aclose()
    assert (await audit.verify()).ok
    await tamper(audit)
    result = await audit.verify()
    assert (result.ok, result.first_bad) == (False, first_bad) and why in result.reason, result
    assert "org-a" in result.reason
    assert (await audit.verify("org-b")).ok  # the other organisation's chain is untouched


async def test_record_never_awaits_and_the_loop_runs_while_10000_entries_are_written(store: MongoStore) -> None:
    audit = AuditLog(store.db)
    await audit.start()
    seen_pending: list[int] = []

    async def ticker() -> None:  # another task on the same loop: it runs between the writer's batches
        while True:
            seen_pending.append(audit.pending)
            await asyncio.sleep(0)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    assert not asyncio.iscoroutinefunction(audit.record)
    for i in range(10_000):
        audit.record(entry(i))  # a plain call: nothing here can yield to the loop
    assert audit.pending == 10_000 and seen_pending[-1] == 0
    await until(audit, lambda a: a.pending == 0, timeout_s=120)
    tick.cancel()
    # the ticker ran while entries were still waiting: writing them did not hold the loop
    assert any(0 < p < 10_000 for p in seen_pending)
    await audit.aclose()
    assert audit.written == 10_000
    assert await audit.entries.count_documents({}) == 10_000
    assert (await audit.verify()).ok


async def test_entries_recorded_while_the_store_is_down_are_written_when_it_is_back(tmp_path: Path) -> None:
    embedded = EmbeddedMongo(tmp_path, port=free_port())
    store = await MongoStore.connect(await embedded.start(), timeout_s=0.5)
    audit = AuditLog(store.db, flush_interval_s=0.05, max_backoff_s=0.5)
    try:
        await audit.start()
        for i in range(20):
            audit.record(entry(i))
        await until(audit, lambda a: a.written == 20)
        await embedded.stop()
        for i in range(20, 320):
            audit.record(entry(i))
        await until(audit, lambda a: a.failures >= 2)  # tried, failed, kept them
        assert audit.pending == 300
        await embedded.start()  # the same port: the client reconnects
        for i in range(320, 350):
            audit.record(entry(i))
        await audit.aclose()
        assert audit.pending == 0
        docs = await all_pages(audit, org_id="org-a", limit=200)
        assert [as_recorded(d) for d in reversed(docs)] == [entry(i) for i in range(350)]
        assert (await audit.verify()).ok
    finally:
        await store.close()
        await embedded.stop()


async def test_past_its_bound_the_queue_spills_to_a_file_and_nothing_is_lost(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    embedded = EmbeddedMongo(tmp_path / "mongo", port=free_port())
    store = await MongoStore.connect(await embedded.start(), timeout_s=0.5)
    metrics = Metrics()
    spill = tmp_path / "data" / "audit.spill.jsonl"
    audit = AuditLog(store.db, metrics=metrics, flush_interval_s=0.05, max_backoff_s=0.5, batch_size=20,
                     max_queue=50, spill_path=spill)
    try:
        await audit.start()
        for i in range(10):
            audit.record(entry(i))
        await until(audit, lambda a: a.written == 10)
        await embedded.stop()
        with caplog.at_level(logging.ERROR, logger="adapters.audit"):
            for i in range(10, 310):
                audit.record(entry(i))
            await until(audit, lambda a: a.failures >= 2)
        # memory holds the bound, the rest is on disk, in order, and it was said once
        assert (audit.queued, audit.pending, audit.spilled) == (50, 300, 250)
        assert spill.read_text().count("\n") == 250 and stat.S_IMODE(spill.stat().st_mode) == 0o600
        assert metrics.audit_spilled._value.get() == 250
        overflow = [r for r in caplog.records if "spilling to" in r.getMessage()]
        assert len(overflow) == 1 and overflow[0].levelno == logging.ERROR
        await embedded.start()  # the same port: the client reconnects
        for i in range(310, 330):  # behind the spilled ones, so in order
            audit.record(entry(i))
        await audit.aclose()
        assert audit.pending == 0 and not spill.exists()
        docs = await all_pages(audit, org_id="org-a", limit=200)
        assert [as_recorded(d) for d in reversed(docs)] == [entry(i) for i in range(330)]
        assert (await audit.verify()).ok
    finally:
        await store.close()
        await embedded.stop()


async def test_what_a_shutdown_could_not_write_is_written_by_the_next_start(tmp_path: Path) -> None:
    embedded = EmbeddedMongo(tmp_path / "mongo", port=free_port())
    store = await MongoStore.connect(await embedded.start(), timeout_s=0.5)
    spill = tmp_path / "audit.spill.jsonl"
    first = AuditLog(store.db, flush_interval_s=0.05, max_backoff_s=0.2, max_queue=10, spill_path=spill)
    try:
        await first.start()
        for i in range(5):
            first.record(entry(i))
        await until(first, lambda a: a.written == 5)
        stored = [d["_id"] async for d in first.entries.find({}, {"_id": 1}).sort("seq", 1)]
        await embedded.stop()
        for i in range(5, 45):
            first.record(entry(i))
        await first.aclose(timeout_s=1.0)  # the store stays down: the queue goes to the front of the file
        assert first.pending == 40 and spill.read_text().count("\n") == 40
        # as if the last write's outcome had been unknown: the 5 stored entries are in the file again, first
        with spill.open("r+") as fh:
            rest = fh.read()
            fh.seek(0)
            fh.write("".join(_spill_line(i, entry(n)) for n, i in enumerate(stored)) + rest)
        await embedded.start()
        second = AuditLog(store.db, flush_interval_s=0.05, max_queue=10, spill_path=spill)
        assert second.pending == 45
        await second.start()
        second.record(entry(45))
        await second.aclose()
        docs = await all_pages(second, org_id="org-a", limit=200)
        assert [as_recorded(d) for d in reversed(docs)] == [entry(i) for i in range(46)]  # none twice
        assert (await second.verify()).ok and not spill.exists()
    finally:
        await store.close()
        await embedded.stop()


async def test_a_damaged_line_in_the_spill_file_is_skipped_and_the_rest_written(
        store: MongoStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spill = tmp_path / "audit.spill.jsonl"
    lines = [_spill_line(f"e{i}", entry(i)) for i in range(4)]
    lines[1] = '{"id": "e1", "actor_type": "user", "at": "not a date"}\n'  # damaged on disk
    lines[2] = "[1, 2]\n"
    spill.write_text("".join(lines))
    audit = AuditLog(store.db, flush_interval_s=0.05, spill_path=spill)
    with caplog.at_level(logging.ERROR, logger="adapters.audit"):
        await audit.start()
        audit.record(entry(4))
        await audit.aclose()
    docs = await all_pages(audit, org_id="org-a", limit=200)
    assert [as_recorded(d) for d in reversed(docs)] == [entry(0), entry(3), entry(4)]
    assert sum("damaged entry" in r.getMessage() for r in caplog.records) == 2
    assert audit.pending == 0 and not spill.exists()


async def test_a_second_writer_collides_loudly_and_the_chain_stays_linear(store: MongoStore,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    first = AuditLog(store.db, flush_interval_s=0.01)
    second = AuditLog(store.db, flush_interval_s=0.01)
    await first.start()
    await second.start()
    first.record(entry(0))
    await until(first, lambda a: a.written == 1)
    second.record(entry(1))  # reads the head (seq 1) and writes seq 2
    await until(second, lambda a: a.written == 1)
    with caplog.at_level(logging.ERROR, logger="adapters.audit"):
        first.record(entry(2))  # still believes the head is seq 1
        await first.aclose()
    await second.aclose()
    assert "another writer appended to the chain" in caplog.text
    assert first.failures == 1
    docs = await all_pages(first, org_id="org-a")
    assert [d["detail"]["n"] for d in docs] == [2, 1, 0]
    assert (await first.verify()).ok


def _verify_cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "server.py", "verify-audit"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**{k: v for k, v in os.environ.items() if k != "MONGODB_URL"}, **env})


async def test_verify_audit_command_exits_0_then_1_after_tampering(store: MongoStore, mongo_url: str,
                                                                    tmp_path: Path) -> None:
    audit = AuditLog(store.db)
    await audit.start()
    for i in range(12):
        audit.record(entry(i))
    await audit.aclose()
    env = {"MONGODB_URL": mongo_url, "MONGODB_DB": store.db.name, "DATA_DIR": str(tmp_path)}
    ok = await asyncio.to_thread(_verify_cli, env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "audit trail intact: 12 entries in 1 chain(s) intact"
    await _edit(audit)
    bad = await asyncio.to_thread(_verify_cli, env)
    assert bad.returncode == 1, bad.stderr
    assert bad.stdout.count("\n") == 1 and "TAMPERED at seq 4" in bad.stdout


async def test_a_trail_kept_in_the_service_database_moves_to_the_audit_database_intact(store: MongoStore) -> None:
    """An older version kept the trail in the service's database: the server's start moves it (same documents,
    chains still verifying, older entries still found), a second start moves nothing, and new entries continue
    the chains where the moved ones ended."""
    old = AuditLog(store.db, batch_size=7)
    await old.start()
    for i in range(30):
        old.record(entry(i, org="org-a" if i % 3 else "org-b"))
    await old.aclose()
    new_db = store.client[f"{store.db.name}_audit"]
    assert await move_trail(store.db, new_db, batch=8) == 30
    assert await move_trail(store.db, new_db) == 0  # idempotent: nothing left to move
    assert store.db.name + "_audit" == new_db.name and await store.db["audit"].count_documents({}) == 0
    moved = AuditLog(new_db)
    await moved.start()
    assert (await moved.verify()).ok
    moved.record(entry(99, org="org-a"))
    await moved.aclose()
    check = await moved.verify()
    assert check.ok and check.entries == 31, check
    docs = await all_pages(moved, org_id="org-a")
    assert [d["seq"] for d in docs] == list(range(21, 0, -1))  # 20 moved + 1 new, one chain, no gap
    # a node of the older version kept writing (seq 21 of org-a again, another entry): it cannot move, it is kept
    stray = {**docs[0], "_id": "written-by-an-old-node", "detail": {"n": -1}}
    await store.db["audit"].insert_one(stray)
    assert await move_trail(store.db, new_db) == 0
    assert await store.db["audit"].count_documents({}) == 1  # still there, not dropped, and the start went on
    assert await new_db["audit"].count_documents({"_id": "written-by-an-old-node"}) == 0


async def test_verify_audit_reads_the_embedded_store_under_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    embedded = EmbeddedMongo(data_dir)  # as a running server keeps it: the command reads it where it runs
    store = await MongoStore.connect(await embedded.start())
    try:
        audit = AuditLog(store.db)
        await audit.start()
        for i in range(3):
            audit.record(entry(i))
        await audit.aclose()
        done = await asyncio.to_thread(_verify_cli, {"DATA_DIR": str(data_dir)})
        assert (done.returncode, done.stdout.strip()) == (0, "audit trail intact: 3 entries in 1 chain(s) intact")
        await audit.entries.delete_one({"seq": 2})
    finally:
        await store.close()
        await embedded.stop()
    # no server running: the command starts the embedded store itself
    done = await asyncio.to_thread(_verify_cli, {"DATA_DIR": str(data_dir)})
    assert done.returncode == 1 and "TAMPERED at seq 2" in done.stdout, (done.stdout, done.stderr)


async def test_the_service_records_api_requests_and_whip_joins_and_leaves(tmp_path: Path, mongo_url: str) -> None:
    async with live_server(test_settings(tmp_path, mongo_url)) as live:
        audit = live.components.audit_log
        assert audit is not None
        iid = await live.create_interview()
        assert (await live.http.get(f"/api/interviews/{iid}/transcript")).status_code == 200
        async with httpx.AsyncClient(base_url=live.url) as anonymous:
            assert (await anonymous.get(f"/api/interviews/{iid}/transcript",
                                        headers={"User-Agent": "curious/1.0"})).status_code == 401
            refused = await anonymous.post(f"/whip/{iid}", content=b"v=0\r\n",
                                           headers={"Authorization": "Bearer forged.token",
                                                    "Content-Type": "application/sdp"})
            assert refused.status_code == 401
        tok = await live.token(iid, "observer", "Obi")
        session = await whip_publish(f"{live.url}/whip/{iid}", tok["token"], track=None, analysis=True)
        await session.close()  # DELETE: a leave
        await until(audit, lambda a: a.written >= 7)
        docs = await all_pages(audit, org_id="default", resource=iid)
        creates = await all_pages(audit, org_id="default", actor="admin-api-key")
        assert (await audit.verify()).ok

    got = [(d["action"], d["actorType"], d["actorId"], d["role"], d["outcome"]) for d in reversed(docs)]
    assert got == [
        ("get_transcript", "api_key", "admin-api-key", "api_key", "ok"),
        ("get_transcript", "anonymous", "", "", "denied"),
        ("whip_join", "anonymous", "", "", "denied"),
        ("issue_token", "api_key", "admin-api-key", "api_key", "ok"),
        ("whip_join", "participant", tok["participantId"], "observer", "ok"),
        ("whip_leave", "participant", tok["participantId"], "observer", "ok"),
    ]
    denied = next(d for d in docs if d["outcome"] == "denied" and d["action"] == "get_transcript")
    assert (denied["address"], denied["userAgent"], denied["detail"]) == ("127.0.0.1", "curious/1.0",
                                                                          {"status": 401})
    assert all(d["resourceType"] == "interview" for d in docs)
    assert not any(tok["token"] in str(d) for d in docs)  # a bearer token never reaches the trail
    # a create has no id in its path: it is recorded against the collection
    assert (creates[-1]["action"], creates[-1]["resourceType"], creates[-1]["resourceId"]) == (
        "create_interview", "interviews", "")  # an organisation-level route: its tag


async def test_a_session_still_open_at_shutdown_is_recorded_as_a_leave(tmp_path: Path, mongo_url: str) -> None:
    settings = test_settings(tmp_path, mongo_url)
    async with live_server(settings) as live:
        iid = await live.create_interview()
        tok = await live.token(iid, "observer", "Obi")
        session = await whip_publish(f"{live.url}/whip/{iid}", tok["token"], track=None, analysis=True)
    await session.close()  # the server is gone: its DELETE fails (logged), the peer connection closes
    store = await MongoStore.connect(mongo_url, db_name=settings.mongodb_db)
    try:
        # the trail lives in a database of its own (AUDIT_DB, default MONGODB_DB + "_audit")
        assert await store.db["audit"].count_documents({}) == 0
        docs, _ = await AuditLog(store.client[settings.audit_db_name]).query(org_id="default", resource=iid)
    finally:
        await store.close()
    assert [(d["action"], d["actorId"], d["outcome"]) for d in docs[:2]] == [
        ("whip_leave", tok["participantId"], "ok"),
        ("whip_join", tok["participantId"], "ok")]
    assert docs[0]["detail"] == {"reason": "shutdown"}


async def test_a_join_the_store_cannot_check_is_refused_503_and_audited(store: MongoStore) -> None:
    """A WHIP join refused because the store is down is a 503 with the one error shape, and an audited `failed`."""
    from starlette.applications import Starlette

    from adapters.http_edge import Audit
    from adapters.metrics import Metrics
    from adapters.tokens import TokenSigner
    from adapters.webrtc import WhipIngest
    from domain.model import Unavailable

    async def store_down(interview_id: str) -> str | None:
        raise Unavailable("connection refused")

    audit = AuditLog(store.db)
    await audit.start()
    signer = TokenSigner(b"s" * 32)
    metrics = Metrics()
    whip = WhipIngest(None, signer, store_down, metrics,  # type: ignore[arg-type]  # never joins
                      audit=Audit(audit, AuditEntry))
    token, claims = signer.issue("iv-1", "interviewer", "Ivy")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=whip.routes())),
                                 base_url="http://test") as client:
        response = await client.post("/whip/iv-1", content=b"v=0\r\n", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/sdp"})
    assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
    await audit.aclose()
    docs, _ = await audit.query(org_id="default")
    assert [(d["action"], d["actorId"], d["outcome"]) for d in docs] == [
        ("whip_join", claims.participant_id, "failed")]
    assert metrics.errors.labels(kind="unavailable")._value.get() == 1


def test_help_lists_the_verify_audit_command_and_the_audit_setting() -> None:
    out = subprocess.run([sys.executable, "server.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "verify-audit" in out and "\n  AUDIT " in out
