"""A candidate's rights over their data, and the participants' consent: erasure (crypto-shredding), export, the
retention job, consent before audio. Every erasure and export returns a receipt signed with the service's Ed25519
key (adapters.crypto).

Erasure of a candidate, in this order, so that nothing about them can be written again once it starts:
1. an `erasures` record (no data key is ever created for them again; a second erasure finds it: 404 with its id);
2. their live sessions end at once (nothing in flight is published or persisted; the server's `end_sessions` also
   revokes the interviews' join tokens, which ends a room another node holds);
3. each of their interviews is cancelled if open and its analysis cleared, with an `InterviewDataErased` event
   (ids only) through the outbox;
4. their data key is destroyed: every sealed copy anywhere (store, JetStream, backups) is now unreadable;
5. what can be deleted is: segments, revisions, consent records, the events log of their interviews, the candidate
   document, and the transcript cached for the API (Redis or memory). Join tokens are not stored; their interviews
   are cancelled, so a token no longer joins.

Retention: an interview closed (completed or cancelled) more than `retention_days` ago loses its transcript,
revisions, consent records and analysis; a candidate whose interviews have all expired is erased as above. A month
whose interviews have all expired loses its segment and revision partitions first, by dropping them.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from adapters.crypto import ReceiptSigner
from adapters.mongo import MongoStore
from domain.commands import InterviewService
from domain.events import iso
from domain.model import DomainError, NotFound, is_valid_id, utc_now

log = logging.getLogger(__name__)

NOTICE_VERSION = "2026-01"  # the notice the pages show (adapters/static/notice.js); bump both together
EndSessions = Callable[[str], Awaitable[int]]  # interview id -> live participants removed


class Erased(DomainError):
    """The candidate's data was erased: `receipt_id` names the erasure (410 for an export, 404 for an erasure)."""

    code = "erased"

    def __init__(self, candidate_id: str, receipt_id: str) -> None:
        super().__init__(f"candidate {candidate_id!r} was erased (receipt {receipt_id})")
        self.receipt_id = receipt_id


@dataclass(slots=True)
class Export:
    archive: bytes  # a zip: export.json and summary.html
    receipt: dict[str, Any]  # {"receipt", "signature"}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1, default=_json_default)


class Privacy:
    """Erasure, export, retention and consent over the store, the interview service and the live rooms."""

    def __init__(self, store: MongoStore, service: InterviewService, signer: ReceiptSigner, *,
                 end_sessions: EndSessions | None = None, retention_days: int = 180,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.service = service
        self.signer = signer
        self.end_sessions = end_sessions
        self.retention_days = retention_days
        self.clock = clock

    def _receipt(self, what: str, candidate_id: str, counts: dict[str, int], by: str, request_id: str,
                 **extra: Any) -> dict[str, Any]:
        return self.signer.sign({"id": uuid.uuid4().hex, "what": what, "candidateId": candidate_id,
                                 "counts": counts, "at": iso(self.clock()), "by": by, "requestId": request_id,
                                 **extra})

    async def _refuse_erased(self, candidate_id: str) -> None:
        record = await self.store.erasure_of(candidate_id)
        if record is not None:
            receipt = (record.get("receipt") or {}).get("receipt") or {}
            raise Erased(candidate_id, str(receipt.get("id") or record.get("erasureId", "")))

    # -- erasure -----------------------------------------------------------------------------------------------
    async def erase(self, candidate_id: str, *, reason: str, by: str, request_id: str) -> dict[str, Any]:
        """Crypto-shred the candidate (see the module's docstring); their signed receipt. Raises `NotFound` for an
        unknown candidate, `Erased` for one erased before."""
        if not is_valid_id(candidate_id):
            raise NotFound("candidate", candidate_id)
        await self._refuse_erased(candidate_id)
        interview_ids = await self.store.interview_ids_of(candidate_id)
        has_record = True
        try:
            await self.store.get_candidate(candidate_id)
        except NotFound:
            has_record = False
        if not has_record and not interview_ids and not await self.store.has_data_key(candidate_id):
            raise NotFound("candidate", candidate_id)
        erasure_id = uuid.uuid4().hex
        await self.store.begin_erasure(candidate_id, {"erasureId": erasure_id, "at": self.clock(), "by": by,
                                                      "requestId": request_id, "done": False})
        live = 0
        for iid in interview_ids:
            if self.end_sessions is not None:
                live += await self.end_sessions(iid)
            await self.service.erase_interview_data(iid, erasure_id)
        key_destroyed = await self.store.destroy_data_key(candidate_id)
        counts = await self.store.delete_interview_data(interview_ids)
        for iid in interview_ids:  # a cached copy of the transcript goes with the segments
            await self.service.forget_transcript(iid)
        counts.update(interviews=len(interview_ids), candidate=int(await self.store.delete_candidate(candidate_id)),
                      dataKey=int(key_destroyed), liveParticipants=live)
        signed = self._receipt("erasure", candidate_id, counts, by, request_id, erasureId=erasure_id,
                               reason=reason, interviewIds=interview_ids)
        await self.store.finish_erasure(candidate_id, signed)
        log.info("candidate %s erased by %s (erasure %s, %d interviews)", candidate_id, by, erasure_id,
                 len(interview_ids))
        return signed

    # -- export ------------------------------------------------------------------------------------------------
    async def export(self, candidate_id: str, *, by: str, request_id: str) -> Export:
        """Everything held about the candidate, as one zip (export.json + summary.html), and its signed receipt
        (which names the archive's SHA-256). Raises `NotFound`, or `Erased` for an erased candidate."""
        if not is_valid_id(candidate_id):
            raise NotFound("candidate", candidate_id)
        await self._refuse_erased(candidate_id)
        try:
            profile: dict[str, Any] | None = await self.service.get_candidate(candidate_id)
        except NotFound:
            profile = None
        interview_ids = await self.store.interview_ids_of(candidate_id)
        if profile is None and not interview_ids:
            raise NotFound("candidate", candidate_id)
        interviews = []
        counts = {"interviews": 0, "segments": 0, "revisions": 0, "consents": 0, "guidance": 0}
        for iid in interview_ids:
            doc = await self.service.get_interview(iid)
            doc["revisions"] = await self.store.list_revisions(iid)
            doc["consents"] = await self.store.list_consents(iid)
            doc["guidance"] = await self.store.list_guidance(iid)  # what the interviewers were shown live
            counts["interviews"] += 1
            counts["segments"] += len(doc["transcription"]["segments"])
            counts["revisions"] += len(doc["revisions"])
            counts["consents"] += len(doc["consents"])
            counts["guidance"] += len(doc["guidance"])
            interviews.append(doc)
        content = {"candidateId": candidate_id, "exportedAt": self.clock(), "profile": profile,
                   "interviews": interviews,
                   "notes": "Analyses come from the transcript text only (no voice or face analysis)."}
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("export.json", to_json(content))
            zf.writestr("summary.html", summary_html(content))
        data = archive.getvalue()
        signed = self._receipt("export", candidate_id, counts, by, request_id,
                               archiveSha256=hashlib.sha256(data).hexdigest())
        log.info("candidate %s exported by %s (%d interviews)", candidate_id, by, counts["interviews"])
        return Export(data, signed)

    # -- retention ---------------------------------------------------------------------------------------------
    async def retention(self, *, dry_run: bool = False, by: str = "retention") -> dict[str, Any]:
        """Erase what is older than `retention_days` after its interview closed; counts of what was (or, with
        `dry_run`, would be) erased."""
        cutoff = self.clock() - timedelta(days=self.retention_days)
        expired = await self.store.closed_before(cutoff)
        by_candidate: dict[str, list[str]] = {}
        for interview in expired:
            by_candidate.setdefault(interview.candidate_id, []).append(interview.interview_id)
        report: dict[str, Any] = {"cutoff": iso(cutoff), "dryRun": dry_run, "expiredInterviews": len(expired),
                                  "candidatesErased": 0, "interviewsCleared": 0, "segments": 0, "revisions": 0,
                                  "monthsDropped": []}
        # A month whose interviews all expired loses its segment and revision partitions at once (two collection
        # drops, no document scanned); the erasures below then find nothing left there.
        for month in await self.store.months():
            if await self.store.month_expired(month, cutoff):
                report["monthsDropped"].append(month)
                if not dry_run:
                    dropped = await self.store.drop_month(month)
                    report["segments"] += dropped["segments"]
                    report["revisions"] += dropped["revisions"]
        for candidate_id, ids in by_candidate.items():
            if await self.store.erasure_of(candidate_id) is not None:
                continue
            everything = set(await self.store.interview_ids_of(candidate_id)) <= set(ids)
            if not everything:
                ids = [i.interview_id for i in expired if i.candidate_id == candidate_id and i.data_erased_at is None]
                if not ids:
                    continue
            if dry_run:
                if everything:
                    report["candidatesErased"] += 1
                else:
                    report["interviewsCleared"] += len(ids)
                continue
            if everything:
                signed = await self.erase(candidate_id, reason=f"retention: closed over {self.retention_days} days "
                                          "ago", by=by, request_id=f"retention-{uuid.uuid4().hex[:8]}")
                report["candidatesErased"] += 1
                counts = signed["receipt"]["counts"]
            else:
                for iid in ids:
                    await self.service.erase_interview_data(iid, f"retention-{uuid.uuid4().hex[:8]}")
                counts = await self.store.delete_interview_data(ids)
                for iid in ids:
                    await self.service.forget_transcript(iid)
                report["interviewsCleared"] += len(ids)
            report["segments"] += counts.get("segments", 0)
            report["revisions"] += counts.get("revisions", 0)
        log.info("retention (%s days%s): %s", self.retention_days, ", dry run" if dry_run else "",
                 {k: v for k, v in report.items() if k != "cutoff"})
        return report

    # -- consent -----------------------------------------------------------------------------------------------
    async def record_consent(self, interview_id: str, participant_id: str, role: str, name: str, *, accepted: bool,
                             notice_version: str, address: str, at: datetime | None = None,
                             after_seq: int | None = None) -> None:
        """One consent record; `after_seq` is the participant's last final before it (where it marks the
        transcript), None if they had none."""
        await self.store.add_consent({"interviewId": interview_id, "participantId": participant_id, "role": role,
                                      "name": name, "action": "accepted" if accepted else "withdrawn",
                                      "noticeVersion": notice_version, "at": at or self.clock(), "address": address,
                                      "afterSeq": after_seq})

    async def transcript_markers(self, interview_id: str) -> list[dict[str, Any]]:
        """The consent changes of an interview's participants as transcript markers, in time order: `type`
        (`consent.given` / `consent.withdrawn`), `participantId`, `role`, `at`, `afterSeq` (the participant's last
        final before it, null if none), `noticeVersion`. No name or address."""
        return [{"type": "consent.given" if c.get("action") == "accepted" else "consent.withdrawn",
                 "participantId": c["participantId"], "role": c.get("role"), "at": c["at"],
                 "afterSeq": c.get("afterSeq"), "noticeVersion": c.get("noticeVersion") or ""}
                for c in await self.store.list_consents(interview_id)]

    async def consent_given(self, interview_id: str, participant_id: str) -> bool:
        return await self.store.consent_given(interview_id, participant_id)


def summary_html(content: dict[str, Any]) -> str:
    """A readable page of the export (the JSON beside it is the complete record)."""
    e = html.escape
    profile = content.get("profile") or {}
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in profile.items()
                   if k not in ("metadata", "interviews") and v not in (None, "", [], {}))
    parts = [f"<!doctype html><html lang=en><meta charset=utf-8><title>Your data: {e(content['candidateId'])}"
             "</title><h1>Data held about you</h1>",
             f"<p>Exported {e(str(iso(content['exportedAt'])))}. {e(content['notes'])}</p>",
             f"<h2>Profile</h2><table>{rows}</table>"]
    for interview in content["interviews"]:
        parts.append(f"<h2>Interview {e(interview['interviewId'])} ({e(interview['status'])}, scheduled "
                     f"{e(str(iso(interview['scheduledAt'])))})</h2>")
        consents = "".join(f"<li>{e(str(c.get('role')))} {e(str(c.get('action')))} notice "
                           f"{e(str(c.get('noticeVersion')))} at {e(str(iso(c.get('at'))))}</li>"
                           for c in interview.get("consents", []))
        parts.append(f"<h3>Consent</h3><ul>{consents or '<li>none recorded</li>'}</ul><h3>Transcript</h3><ol>")
        for seg in interview["transcription"]["segments"]:
            speaker = (seg.get("speaker") or {}).get("name") or seg.get("participantId")
            parts.append(f"<li><b>{e(str(speaker))}</b>: {e(str(seg.get('text') or ''))}</li>")
        parts.append("</ol>")
        analysis = interview.get("analysis") or {}
        overall = analysis.get("overall") or {}
        if analysis.get("status") == "completed":
            parts.append(f"<h3>Analysis (from the transcript text only)</h3><p>{e(str(overall.get('summary') or ''))}"
                         f"</p><p>Keywords: {e(', '.join(str(k.get('term')) for k in analysis.get('keywords', [])))}"
                         "</p>")
    parts.append("</html>")
    return "".join(parts)

