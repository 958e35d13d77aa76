"""Live guidance for the interviewer, from transcript text only: protected-topic alerts, guide coverage,
question ↔ answer pairs and talk balance.

Everything here is pure: `Guidance` is fed finals (with their stream times) and returns stream events; the
embedder (`pipeline.embeddings.SentenceEmbedder`) is injected and its blocking calls are the caller's to move
off the event loop.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from domain.events import (
    AskedRef,
    GuidanceEvent,
    GuideCoverageEvent,
    GuideItemStatus,
    ProtectedTopicAlert,
    QaPairEvent,
    TalkBalanceEvent,
)
from pipeline.embeddings import SentenceEmbedder

Jurisdiction = Literal["eu", "us", "none"]
JURISDICTIONS: tuple[Jurisdiction, ...] = ("eu", "us", "none")
TOPICS = ("age", "family", "pregnancy", "religion", "origin", "disability", "orientation", "arrests",
          "salary_history")  # fmt: skip

# Salary-history bans are per US state/city (and being adopted by some EU pay-transparency rules); the simplification:
# `us` flags it everywhere, `eu` and `none` never do. The other topics are flagged in every jurisdiction.
BANNED_ONLY_IN: dict[str, frozenset[str]] = {"salary_history": frozenset({"us"})}

REPHRASE = {
    "age": "Ask about relevant experience instead; if the role has a legal minimum age: \"Are you at least 18?\"",
    "family": "\"This role needs some evening work and travel; can you meet that schedule?\"",
    "pregnancy": "\"Can you meet the attendance and scheduling requirements of this role?\"",
    "religion": "\"The role includes weekend shifts on rotation; are you able to work that schedule?\"",
    "origin": "\"Are you authorised to work in this country? Will you need visa sponsorship?\"",
    "disability": "\"Can you perform the essential functions of this role, with or without reasonable "
                  "accommodation?\"",  # fmt: skip
    "orientation": "Do not ask; if relevant: \"How do you work with colleagues from different backgrounds?\"",
    "arrests": "Do not ask about arrests; convictions only where the law allows and they relate to the role.",
    "salary_history": "\"What salary range are you expecting for this role?\"",
}

# High-precision phrases: a question matching one is about that topic whatever the embedding says.
_RULES: dict[str, re.Pattern[str]] = {t: re.compile(p, re.I) for t, p in {
    "age": r"\bhow old\b|\byour age\b|\bdate of birth\b|\bwhen (were|was) you born\b|\byear (were )?you (were )?born\b"
           r"|\bbirthday\b|\bretire(ment|ing)?\b|\bpension age\b|\btoo (old|young)\b|\bmillennial\b|\bboomer\b",
    "family": r"\bmarried\b|\b(husband|wife|spouse|fianc[ée]e?)\b|\bchildren\b|\bkids\b|\bchildcare\b"
              r"|\bstart a family\b|\bmaiden name\b|\bdivorced\b|\bsingle parent\b|\bengaged\b"
              r"|\bfamily (obligations|commitments|responsibilities|situation|plans)\b|\bboyfriend\b|\bgirlfriend\b",
    "pregnancy": r"\bpregnan|\bbreast ?(milk|feed)|\bdue date\b|\bhow far along\b|\bmaternity\b|\bbaby\b|\bconceive\b|\bbirth control\b|\bfertility\b"
                 r"|\bare you expecting\W*$|\bexpecting (a|another) (baby|child)\b",
    "religion": r"\breligio|\bchurch\b|\bmosque\b|\bsynagogue\b|\btemple\b|\bpray(er|ers|ing)?\b|\bramadan\b|\bkosher\b"
                r"|\bhalal\b|\bfaith\b|\bbelieve in god\b|\batheist\b|\b(pastor|priest|rabbi|imam|vicar)\b|\bsabbath\b|\bworship\b|\b(muslim|christian|jewish|catholic|hindu|buddhist)\b",
    "origin": r"\bwhere (are|were) you (from|born)\b|\bnationality\b|\bnative (speaker|language|tongue)\b"
              r"|\bfirst language\b|\bmother tongue\b|\bethnic|\bwhat race\b|\bimmigra|\bheritage\b|\baccent\b"
              r"|\bborn here\b|\bcitizen\b",
    "disability": r"\bdisab(led|ility|ilities)\b|\bmedication\b|\bmental health\b|\bsick days\b|\bchronic\b"
                  r"|\bdiagnos|\btherapist\b|\bwheelchair\b|\bsurgery\b|\bhospitali[sz]ed\b|\bprescription\b"
                  r"|\bin good health\b|\bdepression\b|\brehab\b|\bworkers'? comp|\bill(ness)?\b|\binjur"
                  r"|\b(your|with your) (hearing|eyesight|sight|vision|health|leg|legs|arm|arms|back|hands?)\b",
    "orientation": r"\bgay\b|\blesbian\b|\bbisexual\b|\btransgender\b|\bsexual orientation\b|\bqueer\b"
                   r"|\bnon-binary\b|\blgbt|\bgender (identity|reassignment)\b|\btransitioned\b|\bstraight\b",
    "arrests": r"\barrest|\bpolice\b|\bcops?\b|\bin custody\b|\bhandcuff|\bdetained\b|\bthe law\b"
               r"|\bjuvenile detention\b|\bcharged with\b",
    "salary_history": r"\b(current|previous|last|present|past) (salary|pay|base pay|compensation|bonus|employer pay)"
                      r"|\bpay history\b|\bpayslip\b|\bhow much (do|did) you (earn|make)\b|\bwhat (were|are) you paid\b"
                      r"|\b(were|are) you making\b|\bhow much (do|did|does) (your|the) .* pay you\b",
}.items()}
# "gender reassignment surgery" is about gender identity, "pregnancy complications" about pregnancy, not health
_SPECIFIC = frozenset({"orientation", "pregnancy", "salary_history"})
# Lawful questions that share words with the topics: the right to work, salary expectations, essential functions.
_LAWFUL = re.compile(
    r"\bauthori[sz]ed to work\b|\b(allowed|eligible|entitled|permitted) to work\b|\bsponsorship\b"
    r"|\bsalary expectations?\b|\b(salary|pay|compensation) (are you )?(expecting|targeting|range)\b"
    r"|\bexpecting for this role\b|\bessential (functions|duties)\b|\breasonable accommodation\b"
    r"|\bat least 1[68]\b|\btell me about a time\b|\badjustments for the interview\b|\bsecurity clearance\b"
    r"|\bwork (weekends|on saturdays|on sundays|shifts|overtime)\b",
    re.I,
)


# The detector's reference examples: the tuning part of the curated question set, shipped with the package (the
# held-out part, `tests/data/protected_questions.jsonl`, is test data only), so the held-out figures are those of
# the detector that runs.
REFERENCE_EXAMPLES = Path(__file__).resolve().parent / "data" / "protected_examples.jsonl"


@dataclass(frozen=True, slots=True)
class LabelledQuestion:
    text: str
    topic: str | None
    split: str


def load_question_set(path: str | Path) -> list[LabelledQuestion]:
    """Labelled question rows {"text", "topic": null | topic, "split": "tune" (default) | "heldout"}
    (`pipeline/data/protected_examples.jsonl`, `tests/data/protected_questions.jsonl`)."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        d = json.loads(line)
        if d["topic"] is not None and d["topic"] not in TOPICS:
            raise ValueError(f"{path}:{n}: unknown topic {d['topic']!r}")
        out.append(LabelledQuestion(d["text"], d["topic"], d.get("split", "tune")))
    return out


@dataclass(frozen=True, slots=True)
class TopicVerdict:
    text: str
    topic: str | None
    score: float  # similarity of the nearest topic examples (a rule match counts as 1.0)
    rephrase: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "topic": self.topic, "score": round(self.score, 3), "rephrase": self.rephrase}


class ProtectedTopicDetector:
    """Nearest labelled examples (protected topics and lawful near-misses) in embedding space, plus rules.

    A question is flagged with topic T when a rule of T matches; otherwise, unless a lawful rule matches (right to
    work, salary expectations, essential functions), when the mean similarity of its `k` nearest examples of T is at
    least `threshold` and beats its `k` nearest lawful examples by `margin`.
    """

    # Chosen by leave-one-out on the tuning split (`python -m benchmarks.guidance` reports the held-out figures).
    threshold = 0.35
    margin = 0.08
    k = 2

    def __init__(self, embedder: SentenceEmbedder, examples: Iterable[LabelledQuestion],
                 jurisdiction: Jurisdiction = "none") -> None:  # fmt: skip
        if jurisdiction not in JURISDICTIONS:
            raise ValueError(f"jurisdiction must be one of {', '.join(JURISDICTIONS)}; got {jurisdiction!r}")
        self.jurisdiction = jurisdiction
        self._embedder = embedder
        ex = list(examples)
        if not ex:
            raise ValueError("the detector needs labelled example questions")
        self._texts = [e.text for e in ex]
        self._labels = [e.topic for e in ex]
        self._vectors = embedder.embed([e.text for e in ex])

    @property
    def reference_vectors(self) -> np.ndarray:
        """The embeddings of the reference examples: generic interview questions, none from any one guide (the
        guide matcher measures how generic an asked question is against them)."""
        return self._vectors

    def classify(self, texts: Sequence[str]) -> list[TopicVerdict]:
        return self.classify_embedded(texts, self._embedder.embed(list(texts)) if texts else np.zeros((0, 1)))

    def classify_embedded(self, texts: Sequence[str], vectors: np.ndarray) -> list[TopicVerdict]:
        """`classify` with the texts' embeddings already computed (the guidance shares one embedding per final)."""
        sims = vectors @ self._vectors.T if len(texts) else np.zeros((0, 0))
        return [self._verdict(t, s) for t, s in zip(texts, sims, strict=True)]

    def _verdict(self, text: str, sims: np.ndarray, exclude: int | None = None) -> TopicVerdict:
        by_label: dict[str | None, list[float]] = {}
        for i, (label, s) in enumerate(zip(self._labels, sims, strict=True)):
            if i != exclude:
                by_label.setdefault(label, []).append(float(s))
        scores = {lab: float(np.mean(sorted(v, reverse=True)[: self.k])) for lab, v in by_label.items()}
        lawful = scores.pop(None, 0.0)
        topic, score = max(scores.items(), key=lambda kv: kv[1]) if scores else (None, 0.0)
        ruled = [t for t, rx in _RULES.items() if rx.search(text)]
        chosen: str | None = None
        if ruled:
            specific = [t for t in ruled if t in _SPECIFIC] or ruled
            chosen = topic if topic in specific else max(specific, key=lambda t: scores.get(t, 0.0))
            score = 1.0
        elif _LAWFUL.search(text):
            chosen = None
        elif score >= self.threshold and score - lawful >= self.margin:
            chosen = topic
        if chosen is not None and self.jurisdiction not in BANNED_ONLY_IN.get(chosen, frozenset(JURISDICTIONS)):
            chosen = None
        if chosen is None:
            return TopicVerdict(text, None, scores.get(topic, 0.0) if topic else 0.0, None)
        return TopicVerdict(text, chosen, min(score, 1.0), REPHRASE[chosen])

    def leave_one_out(self) -> list[str | None]:
        """The verdict on each example with itself left out of the reference set (how the constants were tuned)."""
        sims = self._vectors @ self._vectors.T
        return [self._verdict(t, sims[i], exclude=i).topic for i, t in enumerate(self._texts)]


def default_detector(embedder: SentenceEmbedder, jurisdiction: Jurisdiction = "none") -> ProtectedTopicDetector:
    """The detector over its reference examples (the tuning part of the curated question set)."""
    return ProtectedTopicDetector(embedder, load_question_set(REFERENCE_EXAMPLES), jurisdiction)


def expected_topic(q: LabelledQuestion, jurisdiction: Jurisdiction) -> str | None:
    if q.topic is not None and jurisdiction not in BANNED_ONLY_IN.get(q.topic, frozenset(JURISDICTIONS)):
        return None
    return q.topic


def precision_recall(pairs: Iterable[tuple[str | None, str | None]]) -> dict[str, Any]:
    """Over (expected, predicted) topics: a flag is correct when its topic is the expected one."""
    tp = fp = fn = right = n = 0
    for want, got in pairs:
        n += 1
        right += want == got
        if got is not None:
            if got == want:
                tp += 1
            else:
                fp += 1
        if want is not None and got != want:
            fn += 1
    return {"n": n, "tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / (tp + fn) if tp + fn else 1.0,
            "topic_accuracy": right / n if n else 1.0}  # fmt: skip


def detector_scores(embedder: SentenceEmbedder, questions: Sequence[LabelledQuestion], *, split: str,
                    jurisdiction: Jurisdiction) -> dict[str, Any]:  # fmt: skip
    """Precision/recall on `split`: the held-out split is classified by a detector built from the tuning split;
    the tuning split by leave-one-out."""
    tune = [q for q in questions if q.split == "tune"]
    det = ProtectedTopicDetector(embedder, tune, jurisdiction)
    if split == "tune":
        got = det.leave_one_out()
        return precision_recall((expected_topic(q, jurisdiction), g) for q, g in zip(tune, got, strict=True))
    rows = [q for q in questions if q.split == split]
    verdicts = det.classify([q.text for q in rows])
    return precision_recall((expected_topic(q, jurisdiction), v.topic) for q, v in zip(rows, verdicts, strict=True))


# ---- guide coverage ---------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z][a-z'+#-]*")
STOP_WORDS = frozenset("""a about above after again all am an and any are as at be been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers him his how
i if in into is it its itself just me more most my myself no nor not now of off on once only or other our ours out
over own same she should so some such than that the their theirs them then there these they this those through to
too under until up very was we were what when where which while who whom why will with would you your yours yourself
tell describe give walk talk share explain example time times kind sort something anything thing things ever really
like just about maybe please us let me okay ok right well also get got go going know think want""".split())


def key_terms(text: str) -> frozenset[str]:
    """Content words, lower-cased, a plural `s` dropped: what "shared key terms" compares."""
    out = set()
    for w in _WORD.findall(text.lower()):
        w = w.strip("'-")
        if len(w) < 3 or w in STOP_WORDS:
            continue
        out.add(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class GuideItem:
    question_id: str
    text: str
    category: str = ""
    budget_s: float | None = None  # seconds planned for the question and its answers

    def __post_init__(self) -> None:
        b = self.budget_s
        if b is not None and (isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b) or b <= 0):
            raise ValueError(f"guide question {self.question_id!r}: budget_s must be a positive number of seconds; "
                             f"got {b!r}")


class GuideMatcher:
    """Matches asked questions to guide questions.

    score = cosine similarity of the two embeddings − `hub_weight` × how generic the asked question is (the mean
    similarity of its `hub_k` nearest reference questions, `reference`) + `term_weight` × the idf-weighted share of
    the guide question's key terms it repeats. A match needs `threshold` and `margin` over the runner-up.

    The generic-question penalty (the "hubness" correction of cross-domain similarity local scaling, Conneau et al.
    2018, "Word translation without parallel data", on the query side only): with MiniLM, questions of the same
    interview register ("Why do you want to work here?", "Can you start within a month?") sit close to every guide
    question of their field, and a fixed threshold on cosine similarity cannot separate them from real rewordings
    that share no words with the guide. Subtracting how close the question is to generic interview questions (the
    protected-topic detector's reference examples: lawful near-misses and protected questions, never guide questions)
    does, in part: on the 229 tuning questions of tests/data/guide_rewordings.jsonl, accuracy 0.825 (0.825 by
    leave-one-guide-out cross-validation of all four constants) against 0.773 for cosine + 0.4 × key terms with a
    0.3 threshold. Key terms no longer earn a weight there (cross-validation picks 0): rewordings that share no
    words with the guide, and off-guide questions that do, outnumber the cases they helped.
    """

    # Chosen on the tuning part of tests/data/guide_rewordings.jsonl by leave-one-guide-out cross-validation
    # (`python -m benchmarks.guidance` compares them with the previous settings on every part).
    threshold = 0.05
    margin = 0.01  # over the runner-up guide question: a question about "design" in general matches none
    hub_weight = 0.75
    hub_k = 10
    term_weight = 0.0

    def __init__(self, embedder: SentenceEmbedder, items: Sequence[GuideItem], reference: np.ndarray,
                 **settings: float) -> None:  # fmt: skip
        """`reference`: the reference questions' embeddings (required: the constants assume the penalty)."""
        if reference is None or not len(reference):
            raise ValueError("the guide matcher needs reference questions (its threshold assumes the penalty)")
        for name, value in settings.items():
            if name not in ("threshold", "margin", "hub_weight", "hub_k", "term_weight"):
                raise ValueError(f"unknown guide matcher setting {name!r}")
            setattr(self, name, int(value) if name == "hub_k" else float(value))
        self.items = list(items)
        self._reference: np.ndarray | None = reference
        self._terms = [key_terms(i.text) for i in self.items]
        # a term in many of the guide's questions ("design" in a designer's guide) says little about which one
        df: dict[str, int] = {}
        for terms in self._terms:
            for t in terms:
                df[t] = df.get(t, 0) + 1
        self._idf = {t: float(np.log(1 + len(self.items) / n)) for t, n in df.items()}
        self._vectors = embedder.embed([i.text for i in self.items]) if self.items else np.zeros((0, 1))

    def genericness(self, vector: np.ndarray) -> float:
        """Mean similarity of the asked question to its `hub_k` nearest reference questions (0 without any)."""
        if self._reference is None:
            return 0.0
        sims = self._reference @ vector
        k = min(self.hub_k, len(sims))
        return float(np.partition(sims, -k)[-k:].mean())

    def scores(self, text: str, vector: np.ndarray) -> np.ndarray:
        if not self.items:
            return np.zeros(0)
        s = self._vectors @ vector - self.hub_weight * self.genericness(vector)
        if self.term_weight:
            asked = key_terms(text)
            s = s + self.term_weight * np.array(
                [sum(self._idf[t] for t in asked & terms) / max(1e-9, sum(self._idf[t] for t in terms))
                 for terms in self._terms])  # fmt: skip
        return np.asarray(s)

    def match(self, text: str, vector: np.ndarray) -> tuple[int | None, float]:
        s = self.scores(text, vector)
        if not len(s):
            return None, 0.0
        best = int(np.argmax(s))
        runner_up = float(np.partition(s, -2)[-2]) if len(s) > 1 else float("-inf")
        ok = s[best] >= self.threshold and s[best] - runner_up >= self.margin
        return (best if ok else None), float(s[best])


def load_guide_rewordings(path: str | Path) -> tuple[dict[str, list[GuideItem]], list[dict[str, Any]]]:
    """tests/data/guide_rewordings.jsonl: guide rows {"guide", "id", "text", "category"} and asked rows
    {"guide", "asked", "expected": id | null, "split"}."""
    guides: dict[str, list[GuideItem]] = {}
    asked = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        if "asked" in d:
            asked.append(d)
        else:
            guides.setdefault(d["guide"], []).append(GuideItem(d["id"], d["text"], d.get("category", "")))
    return guides, asked


def coverage_accuracy(embedder: SentenceEmbedder, path: str | Path, *, split: str = "heldout",
                      reference: np.ndarray | None = None, **settings: float) -> dict[str, Any]:  # fmt: skip
    """Share of asked questions of `split` matched to the guide item they reword (or to none, for questions not in
    the guide), with the matcher the service runs: its reference questions are the protected-topic detector's
    examples unless `reference` is given; `settings` override the matcher's constants (benchmarks compare them)."""
    guides, asked = load_guide_rewordings(path)
    if reference is None:
        reference = embedder.embed([q.text for q in load_question_set(REFERENCE_EXAMPLES)])
    rows = [a for a in asked if a["split"] == split]
    matchers = {g: GuideMatcher(embedder, guides[g], reference, **settings) for g in {a["guide"] for a in rows}}
    vectors = embedder.embed([a["asked"] for a in rows])
    right = false_matches = missed = 0
    for a, v in zip(rows, vectors, strict=True):
        m = matchers[a["guide"]]
        i, _ = m.match(a["asked"], v)
        got = m.items[i].question_id if i is not None else None
        right += got == a["expected"]
        false_matches += got is not None and got != a["expected"]
        missed += got is None and a["expected"] is not None
    n = len(rows)
    return {"n": n, "guides": len(matchers), "accuracy": right / n if n else 1.0, "false_matches": false_matches,
            "missed": missed}  # fmt: skip


# ---- the per-room component ---------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")
_QUESTION_START = re.compile(
    r"^(what|how|why|when|where|who|whom|which|whose|can|could|would|will|do|does|did|are|is|was|were|have|has|had|"
    r"should|may|tell me|describe|walk me|talk me|give me|explain|share)\b", re.I)  # fmt: skip
_FOLLOW_UP = re.compile(r"^(and|so|but|why|how come|can you (say|tell me) more|could you (elaborate|expand)|"
                        r"tell me more|what happened|what did you learn|what was the (result|outcome))\b", re.I)  # fmt: skip
FOLLOW_UP_SIMILARITY = 0.5
INTERRUPTION_TOLERANCE_S = 0.3  # ASR segment edges are this loose; a shorter overlap is a hand-over, not a cut-in
# With budgets a coverage follows every final while a guide question is open; the room stores each one not marked
# time-only (a document replaced, an outbox message published): a change of the times alone is marked unless the
# last unmarked coverage is this old (room time); any other change never is (`GuideCoverageEvent.time_only`).
RECORD_TIMES_EVERY_S = 30.0
_SECTION_TIMES = frozenset({"seconds", "spentS", "remainingS", "over"})


def questions_in(text: str) -> list[str]:
    """The sentences of a final that are questions (ending in "?" or opening like one: "Tell me about…")."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s and (s.endswith("?") or _QUESTION_START.match(s))]


@dataclass(frozen=True, slots=True)
class GuidanceFinal:
    """A final segment as guidance sees it; times are room time (seconds, one clock for every participant)."""

    participant_id: str
    role: str
    seq: int
    text: str
    start_s: float
    end_s: float


@dataclass(slots=True)
class _Pair:
    question: AskedRef
    vector: np.ndarray
    guide_index: int | None
    start_s: float  # the question final's start
    end_s: float | None = None  # the next question's start that is not a follow-up; None while this one is open
    answer: list[GuidanceFinal] = field(default_factory=list)
    follow_ups: list[_Pair] = field(default_factory=list)

    def spent_s(self, now: float) -> float:
        """Time spent on this question and its follow-ups: until the next question, or `now` while open."""
        return max(0.0, (self.end_s if self.end_s is not None else now) - self.start_s)

    def event(self, items: Sequence[GuideItem]) -> QaPairEvent:
        return QaPairEvent(question=self.question,
                           answer=[AskedRef(a.participant_id, a.seq, a.text) for a in self.answer],
                           answer_words=sum(len(a.text.split()) for a in self.answer),
                           answer_s=sum(a.end_s - a.start_s for a in self.answer),
                           guide_item=items[self.guide_index].question_id if self.guide_index is not None else None,
                           follow_ups=[f.event(items) for f in self.follow_ups])  # fmt: skip


class Guidance:
    """Live guidance of one interview, fed its finals in order (`observe`); returns the events to send.

    `observe` embeds the interviewer's questions, so it blocks for milliseconds: call it off the event loop, one
    final at a time.
    """

    def __init__(self, embedder: SentenceEmbedder, detector: ProtectedTopicDetector,
                 guide: Sequence[GuideItem] = ()) -> None:  # fmt: skip
        self._embedder = embedder
        self._detector = detector
        self._matcher = GuideMatcher(embedder, guide, detector.reference_vectors)
        self._coverage = [GuideItemStatus(i.question_id, i.text, i.category, budget_s=i.budget_s) for i in guide]
        self._budgeted = any(i.budget_s is not None for i in guide)
        self._now = 0.0  # the latest end of a final seen: how far the open question's time has run
        self._extra: list[AskedRef] = []
        self._pairs: list[_Pair] = []
        self._speaking: dict[str, float] = {}
        self._roles: dict[str, str] = {}
        self._interruptions: dict[str, int] = {}
        self._recent: deque[GuidanceFinal] = deque(maxlen=64)
        self._longest: dict[str, Any] | None = None
        # the last coverage not marked time-only, without its times, and the room time it was made at
        self._full_coverage: tuple[list[GuideItemStatus], list[AskedRef], list[dict[str, Any]]] | None = None
        self._full_coverage_at = -math.inf

    def observe(self, f: GuidanceFinal) -> list[GuidanceEvent]:
        events: list[GuidanceEvent] = []
        if not f.text.strip():
            return events
        self._count_talk(f)
        self._now = max(self._now, f.end_s)
        if f.role == "interviewer":
            events += self._on_interviewer(f)
        elif f.role == "candidate" and self._pairs:
            top = self._pairs[-1]
            (top.follow_ups[-1] if top.follow_ups else top).answer.append(f)
            self._update_longest(top)
            events.append(top.event(self._matcher.items))
        # with budgets, the time used on an open guide question is news on every final, not only on the next question
        if (self._budgeted and self._pairs and self._pairs[-1].guide_index is not None
                and not any(isinstance(e, GuideCoverageEvent) for e in events)):
            events.append(self.coverage())
        for e in events:
            if isinstance(e, GuideCoverageEvent):
                self._mark_time_only(e)
        events.append(self.balance())
        return events

    def _mark_time_only(self, event: GuideCoverageEvent) -> None:
        untimed = ([replace(i, spent_s=0.0) for i in event.items], event.extra,
                   [{k: v for k, v in s.items() if k not in _SECTION_TIMES} for s in event.sections])  # fmt: skip
        if untimed == self._full_coverage and self._now - self._full_coverage_at < RECORD_TIMES_EVERY_S:
            event.time_only = True
        else:
            self._full_coverage, self._full_coverage_at = untimed, self._now

    def _on_interviewer(self, f: GuidanceFinal) -> list[GuidanceEvent]:
        questions = questions_in(f.text)
        if not questions:
            return []
        events: list[GuidanceEvent] = []
        vectors = self._embedder.embed(questions)
        flagged = [v for v in self._detector.classify_embedded(questions, vectors) if v.topic]
        if flagged:
            v = max(flagged, key=lambda x: x.score)
            assert v.topic is not None and v.rephrase is not None
            events.append(ProtectedTopicAlert(f.participant_id, f.seq, v.text, v.topic, v.score, v.rephrase))
        # the final's most guide-like question stands for it (a final is one turn: "Great. So, how did you…?")
        matches = [self._matcher.match(q, v) for q, v in zip(questions, vectors, strict=True)]
        best = max(range(len(questions)), key=lambda i: matches[i][1])
        index, score = matches[best]
        ref = AskedRef(f.participant_id, f.seq, questions[best])
        pair = _Pair(ref, vectors[best], index, f.start_s)
        top = self._pairs[-1] if self._pairs else None
        if index is None and top is not None and top.answer and (
            _FOLLOW_UP.match(questions[best]) or float(top.vector @ vectors[best]) >= FOLLOW_UP_SIMILARITY
        ):
            top.follow_ups.append(pair)
            events.append(top.event(self._matcher.items))
        else:
            if top is not None:
                top.end_s = max(top.start_s, f.start_s)
            self._pairs.append(pair)
            if index is None:
                self._extra.append(ref)
            elif self._coverage[index].covered_by is None:
                self._coverage[index].covered_by, self._coverage[index].score = ref, score
            events.append(pair.event(self._matcher.items))
        if self._coverage:
            events.append(self.coverage())
        return events

    def coverage(self) -> GuideCoverageEvent:
        spent = [0.0] * len(self._coverage)
        for p in self._pairs:
            if p.guide_index is not None:  # a guide question asked twice spends time twice
                spent[p.guide_index] += p.spent_s(self._now)
        items = [replace(item, spent_s=spent[k]) for k, item in enumerate(self._coverage)]
        sections: dict[str, dict[str, Any]] = {}
        budgets: dict[str, float] = {}  # category -> the sum of its questions' budgets, when one has one
        for item in items:
            s = sections.setdefault(item.category, {"category": item.category, "questions": 0, "covered": 0,
                                                    "seconds": 0.0, "spentS": 0.0})  # fmt: skip
            s["questions"] += 1
            s["covered"] += item.covered_by is not None
            s["spentS"] += item.spent_s
            if item.budget_s is not None:
                budgets[item.category] = budgets.get(item.category, 0.0) + item.budget_s
        for p in self._pairs:
            if p.guide_index is not None:
                s = sections[self._coverage[p.guide_index].category]
                spans = [*p.answer, *(a for fu in p.follow_ups for a in fu.answer)]
                s["seconds"] = round(s["seconds"] + sum(a.end_s - a.start_s for a in spans), 2)
        for category, s in sections.items():
            budget = budgets.get(category)
            s["spentS"] = round(s["spentS"], 2)
            s["budgetS"] = budget
            s["remainingS"] = round(max(0.0, budget - s["spentS"]), 2) if budget is not None else None
            s["over"] = budget is not None and s["spentS"] > budget
        return GuideCoverageEvent(items, list(self._extra), list(sections.values()))

    def _count_talk(self, f: GuidanceFinal) -> None:
        self._roles[f.participant_id] = f.role
        self._speaking[f.participant_id] = self._speaking.get(f.participant_id, 0.0) + max(0.0, f.end_s - f.start_s)
        # each pair of overlapping utterances is judged once, when the second of them arrives
        for other in self._recent:
            if other.participant_id == f.participant_id:
                continue
            first, second = (other, f) if other.start_s <= f.start_s else (f, other)
            if first.start_s < second.start_s < first.end_s - INTERRUPTION_TOLERANCE_S:
                self._interruptions[second.participant_id] = self._interruptions.get(second.participant_id, 0) + 1
        self._recent.append(f)

    def _update_longest(self, top: _Pair) -> None:
        for p in (top, *top.follow_ups):
            seconds = sum(a.end_s - a.start_s for a in p.answer)
            if self._longest is None or seconds > self._longest["seconds"]:
                self._longest = {"questionSeq": p.question.seq, "questionParticipantId": p.question.participant_id,
                                 "seconds": round(seconds, 2), "words": sum(len(a.text.split()) for a in p.answer)}  # fmt: skip

    def balance(self) -> TalkBalanceEvent:
        total = sum(self._speaking.values()) or 1.0
        rows = [{"participantId": pid, "role": self._roles[pid], "speakingSeconds": round(s, 2),
                 "share": round(s / total, 3), "interruptions": self._interruptions.get(pid, 0)}
                for pid, s in self._speaking.items()]  # fmt: skip
        return TalkBalanceEvent(rows, dict(self._longest) if self._longest else None)
