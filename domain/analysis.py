"""After the interview: its structure, the scorecard types, evidence verification and aggregation. Pure: no I/O.

Contract with the analysis providers (`adapters.analysis_providers`) and the job runner (`adapters.analysis_jobs`):

* `conversation(segments, ...)` turns the stored transcript (`InterviewService.get_transcript`'s segments, each
  with its latest revision applied) into `Turn`s on one timeline, each with a pseudonymous speaker label
  ("Candidate", "Interviewer 1", ...) and its text with the participants' names and contact details replaced.
  Providers see only `Turn.index`, `Turn.label` and `Turn.text`; they cite evidence as `{"seq": <Turn.index>,
  "quote"}` and `verify` maps each citation back to the stored segment (participantId, seq), dropping every quote
  that is not in that turn's text.
* `structure(turns, guide)` finds the question <-> answer pairs (follow-ups grouped), talk time, answer lengths,
  response delays and which guide questions were asked.
* `aggregate(runs)` merges the verified scorecards of the providers that answered.

Stream times (`start_s`, `end_s`) are per participant (seconds since that participant's stream started), so the
turns are put on one clock with each participant's offset estimated from `recordedAt` (wall time the final was
stored, i.e. speech end plus a final latency that is about the same for everyone): the median of
`recordedAt - end_s` over that participant's segments.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from domain.model import RECOMMENDATIONS

PROMPT_VERSION = "scorecard-2026.1"
SCORE_MAX = 5.0
OVERALL_MAX = 100.0
DISAGREEMENT = 2.0  # providers this many points apart on a competency: flagged for the reviewer
QUOTE_MIN_WORDS = 2
FUZZ_MIN = 90.0  # rapidfuzz partial_ratio a quote needs against its turn when it is not verbatim (ASR, punctuation)

# ---------------------------------------------------------------------------------------------------------
# Text helpers

_WORD_RE = re.compile(r"[a-z0-9][a-z0-9+#'-]*")
_EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[A-Za-z]{2,}")
_PHONE_RE = re.compile(r"\+?\d[\d ()./-]{6,}\d")
STOP = frozenset("""a about after again all also am an and any are as at be been before being but by can could
did do does doing done for from had has have having he her here him his how i if in into is it its just me my
no not now of on one or our out over so some such than that the their them then there these they this those to
too up us very was we were what when where which while who why will with would you your yours tell describe
walk through could can please okay ok well yes yeah um uh""".split())
FOLLOW_UP_CUES = ("and ", "so ", "why", "how so", "how did", "how was", "what did", "what happened", "what was",
                  "tell me more", "can you elaborate", "could you elaborate", "could you expand", "can you expand",
                  "afterwards", "then ", "did you", "was it", "and what", "and how")


def normalise(text: str) -> str:
    """Lower case, accents folded, punctuation dropped, whitespace collapsed: what quotes are compared on."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower().replace("’", "'")
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text).split())


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def stem(word: str) -> str:
    """Fold simple plurals ("audits" -> "audit", "queries" -> "query")."""
    word = word.strip("'")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def content_tokens(text: str) -> set[str]:
    return {stem(w) for w in words(text) if w not in STOP and len(w) > 2}


def overlap(asked: str, guide: str) -> float:
    """Share of the guide question's content tokens found in what was asked (0..1)."""
    g = content_tokens(guide)
    return len(g & content_tokens(asked)) / len(g) if g else 0.0


# ---------------------------------------------------------------------------------------------------------
# The conversation


@dataclass(slots=True, frozen=True)
class Turn:
    """One stored final segment on the interview's timeline. `index` is what providers cite (as `seq`)."""

    index: int
    participant_id: str
    seq: int
    role: str
    label: str  # pseudonym shown to providers
    text: str  # pseudonymised
    start_s: float  # interview time: seconds since the first turn started
    end_s: float
    revision: int = 0

    @property
    def words(self) -> int:
        return len(self.text.split())

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "participantId": self.participant_id, "seq": self.seq, "role": self.role,
                "label": self.label, "text": self.text, "start_s": round(self.start_s, 3),
                "end_s": round(self.end_s, 3), "revision": self.revision}


def _labels(segments: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """participantId -> "Candidate" / "Interviewer 1" / "Observer 1", numbered in order of first appearance."""
    labels: dict[str, str] = {}
    counts: dict[str, int] = {}
    for s in segments:
        pid = str(s["participantId"])
        if pid in labels:
            continue
        role = str(s.get("speaker", {}).get("role", "candidate"))
        counts[role] = counts.get(role, 0) + 1
        n = counts[role]
        base = {"candidate": "Candidate", "interviewer": "Interviewer"}.get(role, "Observer")
        labels[pid] = (base if n == 1 else f"{base} {n}") if role == "candidate" else f"{base} {n}"
    return labels


def pseudonymiser(names: Mapping[str, str], personal: Iterable[str] = ()) -> Any:
    """A function replacing each name (and each of its parts of 3+ letters) with its label, and `personal` strings
    (the candidate's name, email, phone) and any email address or phone number with a placeholder."""
    replacements: list[tuple[re.Pattern[str], str]] = []
    pieces: dict[str, str] = {}
    for name, label in names.items():
        name = name.strip()
        if not name:
            continue
        pieces.setdefault(name, label)
        for part in name.split():
            if len(part) >= 3:
                pieces.setdefault(part, label)
    for value in personal:
        value = value.strip()
        if value and value not in pieces:
            label = "[email]" if "@" in value else "[phone]" if _PHONE_RE.fullmatch(value) else "Candidate"
            pieces[value] = label
            if label == "Candidate":
                for part in value.split():
                    if len(part) >= 3:
                        pieces.setdefault(part, label)
    for piece in sorted(pieces, key=len, reverse=True):  # "Ada Lovelace" before "Ada"
        replacements.append((re.compile(rf"(?<!\w){re.escape(piece)}(?!\w)", re.IGNORECASE), pieces[piece]))

    def apply(text: str) -> str:
        text = _EMAIL_RE.sub("[email]", text)
        text = _PHONE_RE.sub("[phone]", text)
        for pattern, label in replacements:
            text = pattern.sub(label, text)
        return text

    return apply


def conversation(segments: Sequence[Mapping[str, Any]], personal: Iterable[str] = ()) -> list[Turn]:
    """The stored transcript as turns on one clock, pseudonymised; segments flagged `hallucination` are left out.

    `segments` are transcript entries (`participantId`, `speaker`, `seq`, `start_s`, `end_s`, `text`,
    `recordedAt`, optional `revision`); `personal` are the candidate's personal fields to scrub from the text."""
    kept = [s for s in segments if not s.get("hallucination") and str(s.get("text", "")).strip()]
    labels = _labels(kept)
    scrub = pseudonymiser({str(s.get("speaker", {}).get("name", "")): labels[str(s["participantId"])]
                           for s in kept}, personal)
    offsets: dict[str, float] = {}
    by_pid: dict[str, list[float]] = {}
    for s in kept:
        at = s.get("recordedAt")
        if isinstance(at, datetime):
            by_pid.setdefault(str(s["participantId"]), []).append(at.timestamp() - float(s["end_s"]))
    for pid, values in by_pid.items():
        offsets[pid] = statistics.median(values)
    zero = min((offsets[str(s["participantId"])] + float(s["start_s"]) for s in kept
                if str(s["participantId"]) in offsets), default=0.0)
    timed = []
    for order, s in enumerate(kept):
        pid = str(s["participantId"])
        # without recordedAt (a transcript built in memory) stream times are taken as one clock already
        offset = offsets.get(pid, zero) - zero if offsets else 0.0
        timed.append((offset + float(s["start_s"]), order, offset + float(s["end_s"]), s))
    timed.sort(key=lambda t: (t[0], t[1]))
    return [Turn(index=i, participant_id=str(s["participantId"]), seq=int(s["seq"]),
                 role=str(s.get("speaker", {}).get("role", "candidate")), label=labels[str(s["participantId"])],
                 text=scrub(str(s["text"]).strip()), start_s=max(0.0, start), end_s=max(0.0, end),
                 revision=int(s.get("revision") or 0))
            for i, (start, _, end, s) in enumerate(timed)]


def transcript_text(turns: Sequence[Turn]) -> str:
    """What providers read: one line per turn, `[<index>] <label>: <text>`."""
    return "\n".join(f"[{t.index}] {t.label}: {t.text}" for t in turns)


# ---------------------------------------------------------------------------------------------------------
# Structure: question <-> answer pairs


@dataclass(slots=True, frozen=True)
class GuideQuestion:
    question_id: str
    text: str
    category: str = ""
    expected_keywords: tuple[str, ...] = ()


@dataclass(slots=True)
class Exchange:
    """One interviewer block (consecutive interviewer turns) and the candidate block that answers it."""

    question: list[int]  # turn indices
    answer: list[int]
    question_text: str
    answer_words: int = 0
    answer_s: float = 0.0
    response_delay_s: float | None = None  # question end -> answer start; None when unanswered

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "questionText": self.question_text,
                "answerWords": self.answer_words, "answerSeconds": round(self.answer_s, 2),
                "responseDelaySeconds": None if self.response_delay_s is None else round(self.response_delay_s, 2)}


@dataclass(slots=True)
class QAPair:
    """A question and its follow-ups (`exchanges[0]` is the question), matched to a guide question if any."""

    exchanges: list[Exchange]
    guide_question_id: str | None = None
    guide_match: float = 0.0

    @property
    def answer_words(self) -> int:
        return sum(e.answer_words for e in self.exchanges)

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.exchanges[0].to_dict(), "followUps": [e.to_dict() for e in self.exchanges[1:]],
                "guideQuestionId": self.guide_question_id, "guideMatch": round(self.guide_match, 3),
                "answerWords": self.answer_words}


@dataclass(slots=True)
class Structure:
    pairs: list[QAPair]
    talk_s: dict[str, float]  # by label
    talk_s_by_role: dict[str, float]
    candidate_share: float  # candidate talk time / all talk time (0..1)
    guide: list[dict[str, Any]]  # per guide question: questionId, text, asked, turn, match
    response_delay_median_s: float | None
    answer_words_median: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": [p.to_dict() for p in self.pairs],
                "talkTime": {k: round(v, 2) for k, v in self.talk_s.items()},
                "talkTimeByRole": {k: round(v, 2) for k, v in self.talk_s_by_role.items()},
                "candidateShare": round(self.candidate_share, 3), "guide": self.guide,
                "responseDelayMedianSeconds": None if self.response_delay_median_s is None
                else round(self.response_delay_median_s, 2),
                "answerWordsMedian": self.answer_words_median}


GUIDE_MATCH_MIN = 0.5  # share of a guide question's content words that must be asked for it to count as asked


def _blocks(turns: Sequence[Turn]) -> list[tuple[str, list[Turn]]]:
    """Consecutive turns of the same side (interviewers and observers ask; candidates answer) merged."""
    out: list[tuple[str, list[Turn]]] = []
    for t in turns:
        side = "candidate" if t.role == "candidate" else "interviewer"
        if out and out[-1][0] == side:
            out[-1][1].append(t)
        else:
            out.append((side, [t]))
    return out


def _is_follow_up(text: str, previous_answer: str) -> bool:
    low = text.strip().lower()
    if low.startswith(FOLLOW_UP_CUES):
        return True
    asked = content_tokens(text)
    return bool(asked) and len(asked & content_tokens(previous_answer)) / len(asked) >= 0.5


def structure(turns: Sequence[Turn], guide: Sequence[GuideQuestion] = ()) -> Structure:
    """Q <-> A pairs by speaker role and turn order. An interviewer block starts a new pair when it matches a guide
    question not asked yet, or (without such a match) when it does not read as a follow-up of the last answer
    (a follow-up cue like "and how…", "what happened…", or mostly words of that answer)."""
    pairs: list[QAPair] = []
    asked: dict[str, tuple[int, float]] = {}  # guide question id -> (turn index, match)
    blocks = _blocks(turns)
    for k, (side, block) in enumerate(blocks):
        if side != "interviewer":
            continue
        text = " ".join(t.text for t in block)
        answer = blocks[k + 1][1] if k + 1 < len(blocks) else []
        ex = Exchange(question=[t.index for t in block], answer=[t.index for t in answer], question_text=text,
                      answer_words=sum(t.words for t in answer),
                      answer_s=sum(t.end_s - t.start_s for t in answer),
                      response_delay_s=(max(0.0, answer[0].start_s - block[-1].end_s) if answer else None))
        best: tuple[float, GuideQuestion | None] = (0.0, None)
        for g in guide:
            if g.question_id not in asked:
                score = overlap(text, g.text)
                if score > best[0]:
                    best = (score, g)
        if best[1] is not None and best[0] >= GUIDE_MATCH_MIN:
            asked[best[1].question_id] = (block[0].index, best[0])
            pairs.append(QAPair([ex], best[1].question_id, best[0]))
        elif pairs and _is_follow_up(text, " ".join(turns[i].text for i in pairs[-1].exchanges[-1].answer)):
            pairs[-1].exchanges.append(ex)
        else:
            pairs.append(QAPair([ex]))
    talk: dict[str, float] = {}
    by_role: dict[str, float] = {}
    for t in turns:
        talk[t.label] = talk.get(t.label, 0.0) + (t.end_s - t.start_s)
        by_role[t.role] = by_role.get(t.role, 0.0) + (t.end_s - t.start_s)
    total = sum(by_role.values())
    delays = [e.response_delay_s for p in pairs for e in p.exchanges if e.response_delay_s is not None]
    answer_words = [p.answer_words for p in pairs if p.answer_words]
    return Structure(
        pairs=pairs, talk_s=talk, talk_s_by_role=by_role,
        candidate_share=by_role.get("candidate", 0.0) / total if total else 0.0,
        guide=[{"questionId": g.question_id, "text": g.text, "asked": g.question_id in asked,
                "turn": asked[g.question_id][0] if g.question_id in asked else None,
                "match": round(asked[g.question_id][1], 3) if g.question_id in asked else 0.0} for g in guide],
        response_delay_median_s=statistics.median(delays) if delays else None,
        answer_words_median=statistics.median(answer_words) if answer_words else None)


# ---------------------------------------------------------------------------------------------------------
# Rubric and scorecards


@dataclass(slots=True, frozen=True)
class Competency:
    name: str
    terms: tuple[str, ...] = ()
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "terms": list(self.terms), "description": self.description}


COMMUNICATION = Competency("communication", (), "clear, complete, relevant answers")


def rubric_for(questions: Sequence[GuideQuestion], skills: Sequence[str] = ()) -> list[Competency]:
    """The job's rubric: one competency per question category (its terms: those questions' expected keywords),
    the job's `skills` (or, without categories, every expected keyword) as "technical skills", and communication."""
    by_category: dict[str, list[str]] = {}
    loose: list[str] = []
    for q in questions:
        if q.category.strip():
            by_category.setdefault(q.category.strip().lower(), []).extend(q.expected_keywords)
        else:
            loose.extend(q.expected_keywords)
    rubric = [Competency(name, tuple(dict.fromkeys(t.lower() for t in terms)), f"questions on {name}")
              for name, terms in by_category.items() if name != COMMUNICATION.name]
    technical = tuple(dict.fromkeys(t.strip().lower() for t in [*skills, *loose] if t.strip()))
    if technical or not rubric:
        rubric.append(Competency("technical skills", technical, "the job's skills, shown with concrete detail"))
    rubric.append(COMMUNICATION)
    return rubric


@dataclass(slots=True, frozen=True)
class Evidence:
    participant_id: str
    seq: int
    quote: str
    turn: int = -1  # index in the conversation it was verified against

    def to_dict(self) -> dict[str, Any]:
        return {"participantId": self.participant_id, "seq": self.seq, "quote": self.quote, "turn": self.turn}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Evidence:
        return cls(str(d["participantId"]), int(d["seq"]), str(d["quote"]), int(d.get("turn", -1)))


@dataclass(slots=True)
class CompetencyScore:
    name: str
    score: float | None  # 0..5; None: no verified evidence
    rationale: str = ""
    evidence: list[Evidence] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "score": self.score, "rationale": self.rationale,
                "evidence": [e.to_dict() for e in self.evidence]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompetencyScore:
        return cls(str(d["name"]), d.get("score"), str(d.get("rationale", "")),
                   [Evidence.from_dict(e) for e in d.get("evidence", ())])


@dataclass(slots=True)
class Scorecard:
    competencies: list[CompetencyScore]
    strengths: list[str] = field(default_factory=list)
    improvements: list[str] = field(default_factory=list)
    recommendation: str = "undecided"
    overall: float | None = None  # 0..100

    def to_dict(self) -> dict[str, Any]:
        return {"competencies": [c.to_dict() for c in self.competencies], "strengths": list(self.strengths),
                "improvements": list(self.improvements), "recommendation": self.recommendation,
                "overall": self.overall}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scorecard:
        return cls([CompetencyScore.from_dict(c) for c in d.get("competencies", ())], list(d.get("strengths", ())),
                   list(d.get("improvements", ())), str(d.get("recommendation", "undecided")), d.get("overall"))


@dataclass(slots=True, frozen=True)
class Citation:
    """Evidence as a provider gives it: the turn index it read (`seq` in its output) and the quote."""

    turn: int
    quote: str


@dataclass(slots=True)
class ClaimedCompetency:
    name: str
    score: float
    rationale: str
    evidence: list[Citation]


@dataclass(slots=True)
class ClaimedScorecard:
    """A provider's answer after schema validation, before its evidence is checked against the transcript."""

    competencies: list[ClaimedCompetency]
    strengths: list[str]
    improvements: list[str]
    recommendation: str
    overall: float


def quote_in(quote: str, text: str, fuzz_min: float = FUZZ_MIN) -> bool:
    """Whether `quote` is in `text`: verbatim once normalised, or nearly (rapidfuzz partial_ratio >= fuzz_min) and
    not longer than the text (a longer quote would contain the text plus words nobody said)."""
    q, t = normalise(quote), normalise(text)
    if len(q.split()) < QUOTE_MIN_WORDS:
        return False
    if q in t:
        return True
    if len(q) > len(t) * 1.05 + 3:
        return False
    from rapidfuzz import fuzz  # C extension; imported where used so the domain stays light to import

    return float(fuzz.partial_ratio(q, t)) >= fuzz_min


def verify(claimed: ClaimedScorecard, turns: Sequence[Turn], rubric: Sequence[Competency]) -> tuple[Scorecard, int]:
    """Keep only evidence whose quote is in the turn it cites (a candidate's turn, or any turn for communication);
    a competency without verified evidence gets no score. Competencies outside the rubric are dropped.
    Returns the scorecard and how many citations were rejected."""
    by_index = {t.index: t for t in turns}
    names = {c.name.lower(): c.name for c in rubric}
    rejected = 0
    out: dict[str, CompetencyScore] = {}
    for comp in claimed.competencies:
        name = names.get(comp.name.strip().lower())
        if name is None or name in out:
            rejected += len(comp.evidence)
            continue
        kept: list[Evidence] = []
        for cite in comp.evidence:
            turn = by_index.get(cite.turn)
            if turn is None or not quote_in(cite.quote, turn.text):
                rejected += 1
                continue
            ev = Evidence(turn.participant_id, turn.seq, cite.quote.strip(), turn.index)
            if ev not in kept:
                kept.append(ev)
        score = min(SCORE_MAX, max(0.0, float(comp.score))) if kept else None
        out[name] = CompetencyScore(name, score, comp.rationale.strip(), kept)
    competencies = [out.get(c.name, CompetencyScore(c.name, None, "", [])) for c in rubric]
    recommendation = claimed.recommendation if claimed.recommendation in RECOMMENDATIONS else "undecided"
    overall = min(OVERALL_MAX, max(0.0, float(claimed.overall)))
    return Scorecard(competencies, [s.strip() for s in claimed.strengths if s.strip()][:10],
                     [s.strip() for s in claimed.improvements if s.strip()][:10], recommendation, overall), rejected


# ---------------------------------------------------------------------------------------------------------
# Provider runs and their aggregate

PENDING, RUNNING, COMPLETED, PARTIAL, FAILED = "pending", "running", "completed", "partial", "failed"
JOB_STATUSES = (PENDING, RUNNING, COMPLETED, PARTIAL, FAILED)


@dataclass(slots=True)
class ProviderRun:
    """One provider's part of an analysis: what it was asked (replayable: model, prompt version, hash of the
    input) and what came back."""

    provider: str
    model: str
    kind: str  # "llm" | "heuristic" | "manual"
    status: str  # completed | failed
    prompt_version: str = PROMPT_VERSION
    input_hash: str = ""
    latency_s: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    attempts: int = 0
    error: str = ""
    evidence_rejected: int = 0
    scorecard: Scorecard | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "model": self.model, "kind": self.kind, "status": self.status,
                "promptVersion": self.prompt_version, "inputHash": self.input_hash,
                "latencySeconds": round(self.latency_s, 3), "tokens": {"input": self.tokens_in,
                                                                       "output": self.tokens_out},
                "attempts": self.attempts, "error": self.error, "evidenceRejected": self.evidence_rejected,
                "scorecard": self.scorecard.to_dict() if self.scorecard else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProviderRun:
        tokens = d.get("tokens") or {}
        return cls(provider=str(d["provider"]), model=str(d.get("model", "")), kind=str(d.get("kind", "llm")),
                   status=str(d["status"]), prompt_version=str(d.get("promptVersion", "")),
                   input_hash=str(d.get("inputHash", "")), latency_s=float(d.get("latencySeconds", 0.0)),
                   tokens_in=int(tokens.get("input", 0)), tokens_out=int(tokens.get("output", 0)),
                   attempts=int(d.get("attempts", 0)), error=str(d.get("error", "")),
                   evidence_rejected=int(d.get("evidenceRejected", 0)),
                   scorecard=Scorecard.from_dict(d["scorecard"]) if d.get("scorecard") else None)


def input_hash(turns: Sequence[Turn], rubric: Sequence[Competency], prompt_version: str = PROMPT_VERSION) -> str:
    """sha256 of exactly what a provider is given: the pseudonymised transcript, the rubric and the prompt version."""
    payload = json.dumps({"transcript": transcript_text(turns), "rubric": [c.to_dict() for c in rubric],
                          "prompt": prompt_version}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def _median_recommendation(values: Sequence[str]) -> str:
    # RECOMMENDATIONS runs from strong_hire to strong_no_hire; the median of the ranks (low median on ties, the
    # more cautious side of two)
    ranks = sorted(RECOMMENDATIONS.index(v) for v in values if v in RECOMMENDATIONS)
    return RECOMMENDATIONS[ranks[len(ranks) // 2]] if ranks else "undecided"


def _union(lists: Iterable[Sequence[str]], limit: int = 10) -> list[str]:
    seen: dict[str, str] = {}
    for items in lists:
        for s in items:
            seen.setdefault(normalise(s), s)
    return list(seen.values())[:limit]


def aggregate(runs: Sequence[ProviderRun], rubric: Sequence[Competency]) -> dict[str, Any] | None:
    """Per competency the median score over the providers that scored it, the spread (max - min), the union of
    verified evidence, `flagged` when providers are `DISAGREEMENT` points or more apart; strengths and
    improvements merged; the median recommendation and overall. None when no run has a scorecard."""
    cards = [(r.provider, r.scorecard) for r in runs if r.status == COMPLETED and r.scorecard is not None]
    if not cards:
        return None
    names = [c.name for c in rubric]
    for _, card in cards:
        names += [c.name for c in card.competencies if c.name not in names]
    competencies = []
    for name in names:
        scored: dict[str, float] = {}
        rationales: dict[str, str] = {}
        evidence: list[Evidence] = []
        seen: set[tuple[str, int, str]] = set()
        for provider, card in cards:
            for c in card.competencies:
                if c.name != name:
                    continue
                if c.score is not None:
                    scored[provider] = c.score
                if c.rationale:
                    rationales[provider] = c.rationale
                for e in c.evidence:
                    key = (e.participant_id, e.seq, normalise(e.quote))
                    if key not in seen:
                        seen.add(key)
                        evidence.append(e)
        values = list(scored.values())
        spread = max(values) - min(values) if values else 0.0
        competencies.append({
            "name": name, "score": round(statistics.median(values), 2) if values else None,
            "spread": round(spread, 2), "flagged": len(values) > 1 and spread >= DISAGREEMENT,
            "scores": {p: round(v, 2) for p, v in scored.items()}, "rationales": rationales,
            "evidence": [e.to_dict() for e in evidence]})
    overalls = [card.overall for _, card in cards if card.overall is not None]
    return {"competencies": competencies,
            "strengths": _union(card.strengths for _, card in cards),
            "improvements": _union(card.improvements for _, card in cards),
            "recommendation": _median_recommendation([card.recommendation for _, card in cards]),
            "overall": round(statistics.median(overalls), 1) if overalls else None,
            "basis": [p for p, _ in cards],
            "flagged": [c["name"] for c in competencies if c["flagged"]]}


def job_status(runs: Sequence[ProviderRun], configured: Sequence[str]) -> str:
    """completed: every configured provider answered; partial: some did; failed: none (the heuristic's scorecard,
    if any, is then what the aggregate rests on). With no provider configured the heuristic is the provider."""
    if not configured:
        return COMPLETED if any(r.status == COMPLETED for r in runs) else FAILED
    done = {r.provider for r in runs if r.status == COMPLETED and r.provider in configured}
    if len(done) == len(configured):
        return COMPLETED
    return PARTIAL if done else FAILED


# ---------------------------------------------------------------------------------------------------------
# Jurisdiction policy (per organisation) and human review
#
# What a view of an analysis may show depends on the organisation's jurisdiction:
#   eu      (AI Act: recruitment AI is high-risk) scores and recommendation are never final until a reviewer
#           confirms; a rejected analysis shows no scores; the tone of words (text sentiment) is off unless the
#           organisation turns it on.
#   us-nyc  (Local Law 144) the candidate is told an automated tool is used, the bias audit's date and whom to
#           ask for an alternative process; scores are exportable for the audit.
#   none    computed and shown.
# Every view is advisory, whatever the jurisdiction.

JURISDICTIONS = ("eu", "us-nyc", "none")
ADVISORY_LABEL = "advisory"
REVIEW_ACTIONS = ("edit", "confirm", "reject")
UNREVIEWED, EDITED, CONFIRMED, REJECTED = "unreviewed", "edited", "confirmed", "rejected"
NOTE_MAX = 5000
CONTACT_MAX = 500
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(slots=True, frozen=True)
class OrgPolicy:
    """An organisation's rules for analyses. `tone_enabled` None: the jurisdiction's default (off in eu)."""

    jurisdiction: str = "eu"
    bias_audit_date: str | None = None  # YYYY-MM-DD of the latest independent bias audit (us-nyc)
    alternative_process_contact: str | None = None  # whom a candidate asks for another selection process
    tone_enabled: bool | None = None

    @property
    def tone(self) -> bool:
        return self.tone_enabled if self.tone_enabled is not None else self.jurisdiction != "eu"

    @property
    def needs_confirmation(self) -> bool:
        return self.jurisdiction == "eu"

    def candidate_notice(self) -> dict[str, Any] | None:
        """What the candidate page shows under NYC Local Law 144 (None elsewhere)."""
        if self.jurisdiction != "us-nyc":
            return None
        return {"law": "NYC Local Law 144",
                "automatedTool": True,
                "text": "An automated employment decision tool is used: the transcript of this interview (text "
                        "only) is scored against the job's competencies, and a person reviews the result.",
                "biasAuditDate": self.bias_audit_date,
                "alternativeProcessContact": self.alternative_process_contact}

    def to_dict(self) -> dict[str, Any]:
        return {"jurisdiction": self.jurisdiction, "biasAuditDate": self.bias_audit_date,
                "alternativeProcessContact": self.alternative_process_contact, "toneEnabled": self.tone_enabled,
                "tone": self.tone}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], default_jurisdiction: str = "eu") -> OrgPolicy:
        """From an organisation's stored fields; one that never chose a jurisdiction has the service's default."""
        jurisdiction = d.get("jurisdiction") or default_jurisdiction
        tone = d.get("toneEnabled")
        return cls(jurisdiction if jurisdiction in JURISDICTIONS else default_jurisdiction,
                   d.get("biasAuditDate") or None, d.get("alternativeProcessContact") or None,
                   tone if isinstance(tone, bool) else None)

    @staticmethod
    def parse_update(data: object) -> dict[str, Any]:
        """A PATCH of the organisation's settings: the stored fields to change (null clears one). 422 otherwise."""
        from domain.model import Fields

        f = Fields(data, allowed=("jurisdiction", "biasAuditDate", "alternativeProcessContact", "toneEnabled"))
        out: dict[str, Any] = {}
        if f.has("jurisdiction"):
            out["jurisdiction"] = f.choice("jurisdiction", JURISDICTIONS)
        if f.has("biasAuditDate"):
            value = f.data["biasAuditDate"]
            if value is not None and not (isinstance(value, str) and _DATE_RE.fullmatch(value)
                                          and _is_date(value)):
                f.error("biasAuditDate", "expected a date YYYY-MM-DD or null")
            out["biasAuditDate"] = value
        if f.has("alternativeProcessContact"):
            out["alternativeProcessContact"] = f.text("alternativeProcessContact", required=False,
                                                      max_len=CONTACT_MAX) or None
        if f.has("toneEnabled"):
            value = f.data["toneEnabled"]
            if value is not None and not isinstance(value, bool):
                f.error("toneEnabled", "expected true, false or null (the jurisdiction's default)")
            out["toneEnabled"] = value
        if not f.invalid and not out and not f.errors:
            f.error("body", "expected at least one of jurisdiction, biasAuditDate, alternativeProcessContact, "
                            "toneEnabled")
        f.done()
        return out


def _is_date(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def new_review() -> dict[str, Any]:
    return {"status": UNREVIEWED, "scorecard": None, "note": "", "history": []}


def review_change(review: Mapping[str, Any] | None, action: str, scorecard: dict[str, Any] | None, note: str,
                  by: str, at: str, machine: dict[str, Any] | None) -> dict[str, Any]:
    """The review after a reviewer's `action`, with the change appended to its history (who, when, before, after).

    * edit: `scorecard` (validated by the caller) becomes the reviewer's draft (`edited`); a confirmed scorecard
      stops being confirmed until it is confirmed again.
    * confirm: the draft, or `scorecard` when given, or else the machine aggregate, is confirmed: from then on
      the default view (a copy: a later re-run of the machine analysis does not change it).
    * reject: the analysis is rejected as a basis for the decision.

    Raises `Conflict` when there is nothing to confirm."""
    from domain.model import Conflict

    current = dict(review) if review else new_review()
    history = list(current.get("history", ()))
    before = {"status": current.get("status", UNREVIEWED), "scorecard": current.get("scorecard")}
    after = dict(before)
    if action == "edit":
        after = {"status": EDITED, "scorecard": scorecard}
    elif action == "confirm":
        chosen = scorecard or current.get("scorecard") or _reviewable(machine)
        if chosen is None:
            raise Conflict("there is no scorecard to confirm yet", code="nothing_to_confirm")
        after = {"status": CONFIRMED, "scorecard": chosen}
    elif action == "reject":
        after = {"status": REJECTED, "scorecard": current.get("scorecard")}
    else:
        raise ValueError(f"unknown review action {action!r}")
    history.append({"action": action, "by": by, "at": at, "note": note, "before": before, "after": after})
    return {**current, **after, "note": note, "updatedBy": by, "updatedAt": at, "history": history}


def _reviewable(agg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A machine aggregate as a reviewer's scorecard: the same shape, less the providers' own scores."""
    if not agg:
        return None
    return {"competencies": [{"name": c["name"], "score": c.get("score"),
                              "rationale": " / ".join(dict.fromkeys((c.get("rationales") or {}).values())),
                              "evidence": list(c.get("evidence", ()))} for c in agg.get("competencies", ())],
            "strengths": list(agg.get("strengths", ())), "improvements": list(agg.get("improvements", ())),
            "recommendation": agg.get("recommendation", "undecided"), "overall": agg.get("overall")}


def _without_scores(card: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if card is None:
        return None
    return {**card, "competencies": [{**c, "score": None, "scores": {}} if "scores" in c else {**c, "score": None}
                                     for c in card.get("competencies", ())],
            "overall": None, "recommendation": "undecided"}


def policy_view(policy: OrgPolicy, machine: dict[str, Any] | None, review: Mapping[str, Any] | None,
                providers: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """What a view of an analysis shows under `policy`: `aggregate` (the confirmed scorecard by default when there
    is one, else the machine aggregate; `version` says which), the provider runs, and `policy` (advisory always;
    `final` once a reviewer confirmed, or outside the eu while not rejected)."""
    review = review or new_review()
    status = review.get("status", UNREVIEWED)
    served = "machine"
    agg = machine
    if version == "confirmed" and status == CONFIRMED and review.get("scorecard"):
        agg, served = _reviewed_aggregate(review["scorecard"], machine), "confirmed"
    final = status == CONFIRMED or (not policy.needs_confirmation and status != REJECTED)
    hidden = status == REJECTED and policy.needs_confirmation
    if hidden:
        agg = _without_scores(agg)
        providers = [{**p, "scorecard": _without_scores(p.get("scorecard"))} for p in providers]
    label = ("advisory: a reviewer confirmed it" if status == CONFIRMED
             else "advisory: rejected by a reviewer" if status == REJECTED
             else "advisory: not final until a reviewer confirms it" if policy.needs_confirmation
             else "advisory")
    return {"aggregate": agg, "providers": providers, "version": served,
            "policy": {"jurisdiction": policy.jurisdiction, "advisory": True, "final": final, "label": label,
                       "scoresHidden": hidden, "tone": policy.tone}}


def _reviewed_aggregate(card: Mapping[str, Any], machine: Mapping[str, Any] | None) -> dict[str, Any]:
    """A reviewer's scorecard in the aggregate's shape (what GET returns as `aggregate`)."""
    competencies = [{"name": c["name"], "score": c.get("score"), "spread": 0.0, "flagged": False,
                     "scores": {"reviewer": c["score"]} if c.get("score") is not None else {},
                     "rationales": {"reviewer": c["rationale"]} if c.get("rationale") else {},
                     "evidence": list(c.get("evidence", ()))} for c in card.get("competencies", ())]
    return {"competencies": competencies, "strengths": list(card.get("strengths", ())),
            "improvements": list(card.get("improvements", ())),
            "recommendation": card.get("recommendation", "undecided"), "overall": card.get("overall"),
            "basis": ["reviewer"], "flagged": []}
