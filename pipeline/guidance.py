"""Live guidance for the interviewer, from transcript text only: protected-topic alerts, guide coverage,
question ↔ answer pairs and talk balance.

Everything here is pure: `Guidance` is fed finals (with their stream times) and returns stream events; the
embedder (`pipeline.embeddings.SentenceEmbedder`) is injected and its blocking calls are the caller's to move
off the event loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

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


# The curated question set (tests/data/protected_questions.jsonl); the detector's reference examples are its
# tuning part, so the held-out part's figures are those of the detector that runs.
QUESTION_SET = Path(__file__).resolve().parents[1] / "tests" / "data" / "protected_questions.jsonl"


@dataclass(frozen=True, slots=True)
class LabelledQuestion:
    text: str
    topic: str | None
    split: str


def load_question_set(path: str | Path) -> list[LabelledQuestion]:
    """`tests/data/protected_questions.jsonl`-style rows: {"text", "topic": null | topic, "split"}."""
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
    """The detector over the tuning part of the curated question set."""
    return ProtectedTopicDetector(embedder, [q for q in load_question_set(QUESTION_SET) if q.split == "tune"],
                                  jurisdiction)  # fmt: skip


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
