"""Incremental text analysers, one state per speaker: sentiment (VADER on transcript text) and keywords.

Both take one final segment's text at a time and do work proportional to that segment (plus, for the
keyword ranking, the speaker's bounded vocabulary): nothing re-reads the interview so far.

Legal boundary: sentiment is computed from the words of the transcript only. Nothing here (or anywhere in
this service) infers emotion from voice, prosody or faces.
"""

from __future__ import annotations

import bisect
import heapq
import math
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from domain.events import Keyword

_vader_lock = threading.Lock()
_NO_ONE_RE = re.compile(r"\bno one\b", re.IGNORECASE)
_vader: Any = None


def _analyzer() -> Any:
    """VADER's analyser reads its lexicon file on construction: build it once per process, on first use."""
    global _vader
    with _vader_lock:
        if _vader is None:
            import vaderSentiment.vaderSentiment as vader

            # VADER's negation list has "none", "nothing", "nowhere" but not "nobody"/"no one", so
            # "nobody was harmed" scores as harm. Extend the list (module-level, read by its `negated()`).
            for word in ("nobody", "noone"):
                if word not in vader.NEGATE:
                    vader.NEGATE.append(word)
            _vader = vader.SentimentIntensityAnalyzer()
        return _vader


def text_sentiment(text: str) -> float:
    """VADER compound score of `text` in [-1, 1]."""
    if not text.strip():
        return 0.0
    return float(_analyzer().polarity_scores(_NO_ONE_RE.sub("noone", text))["compound"])


@dataclass(slots=True)
class SentimentTracker:
    """Per-speaker sentiment timeline: each segment's score and an exponentially smoothed `rolling` value.

    The smoothing weight of a segment grows with its length (a one-word "okay" moves the needle less than
    a long answer): alpha = 1 - (1 - base_alpha) ** (words / 10).
    """

    base_alpha: float = 0.35
    rolling: float = 0.0
    count: int = 0
    # the last `recent` segments: seq -> [score, alpha, rolling before it], so a revised segment's text can
    # replace its score and the smoothing be redone from there (O(recent), not O(interview))
    recent: int = 16
    _recent: dict[int, list[float]] = field(default_factory=dict, repr=False)

    def update(self, text: str, seq: int | None = None) -> tuple[float, float]:
        score = text_sentiment(text)
        alpha = 1.0 if self.count == 0 else self._alpha(text)
        before = self.rolling
        self.rolling += alpha * (score - self.rolling)
        self.count += 1
        if seq is not None:
            self._recent[seq] = [score, alpha, before]
            if len(self._recent) > self.recent:
                del self._recent[next(iter(self._recent))]
        return score, self.rolling

    def revise(self, seq: int, text: str) -> tuple[float, float] | None:
        """Replace segment `seq`'s text (a revised final): its new score and the smoothed value at it; the
        later segments' smoothing is redone. None when `seq` is older than the last `recent` segments."""
        entry = self._recent.get(seq)
        if entry is None:
            return None
        score = text_sentiment(text)
        entry[0] = score
        if entry[1] < 1.0:
            entry[1] = self._alpha(text)
        rolling, at_seq = entry[2], 0.0
        for k, (s, a, _) in self._recent.items():  # insertion order is segment order
            if k < seq:
                continue
            self._recent[k][2] = rolling
            rolling += a * (s - rolling)
            if k == seq:
                at_seq = rolling
        self.rolling = rolling
        return score, at_seq

    def remove(self, seq: int) -> float | None:
        """Take segment `seq` out (it was someone else's voice): the smoothed value without it, the later
        segments' smoothing redone. None when `seq` is older than the last `recent` segments."""
        entry = self._recent.pop(seq, None)
        if entry is None:
            return None
        self.count -= 1
        rolling, first = entry[2], entry[1] >= 1.0  # the speaker's first segment: the next one starts the value
        for k, (s, a, _) in self._recent.items():
            if k < seq:
                continue
            if first:
                a = self._recent[k][1] = 1.0
                first = False
            self._recent[k][2] = rolling
            rolling += a * (s - rolling)
        self.rolling = rolling
        return rolling

    def _alpha(self, text: str) -> float:
        return 1.0 - (1.0 - self.base_alpha) ** (max(1, len(text.split())) / 10.0)


# ------------------------------------------------------------------------------------------------ keywords

STOP_WORDS = frozenset(
    """
    a about above after again against all almost also am an and any are aren't as at be because been before
    being below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down
    during each either else even ever every few for from further get gets got had hadn't has hasn't have haven't
    having he he'd he'll he's her here here's hers herself him himself his how how's however i i'd i'll i'm i've
    if in into is isn't it it's its itself just let's like many may me might more most much must mustn't my
    myself neither no nor not now of off often on once one only or other ought our ours ourselves out over own
    per quite rather same shall shan't she she'd she'll she's should shouldn't since so some still such than that
    that's the their theirs them themselves then there there's these they they'd they'll they're they've this
    those though through thus to too under until up upon us very via was wasn't we we'd we'll we're we've were
    weren't what what's whatever when when's where where's whether which while who who's whom whose why why's
    will with within without won't would wouldn't yes yet you you'd you'll you're you've your yours yourself
    yourselves
    """.split()
)

# Conversation filler and the vocabulary of any interview: never "distinctive".
FILLER_WORDS = frozenset(
    """
    um umm uh uhh er erm ah oh hmm mm mhm yeah yep okay ok right well actually basically literally really
    kind sort thing things stuff lot lots bit know mean guess think thought say said says tell told ask asked
    go goes going went gone come came make made making take took want wanted need needed see saw look looked
    try tried use used using work worked working way ways time times good great nice fine sure thank thanks
    welcome hello hi question questions answer interview job role team company people person something
    anything everything nothing someone anyone everyone first last next new old little big long short able
    recently describe example bad badly handle handled about maybe probably definitely absolutely pretty
    day days week weeks month months year years today yesterday tomorrow back part also two three four five
    """.split()
)

# Common English words that carry little topic: down-weighted (not excluded) so they rank below rarer terms.
COMMON_WORDS = frozenset(
    """
    find found give gave keep kept call called show showed feel feels felt seem seemed help helped start started
    run ran move moved put set sets build built building write written change changed end ended live lived
    happen happened turn turned mind point case fact area areas group problem problems place places world home
    hand part side level order number numbers line lines name names life idea ideas result results reason
    reasons course sense kind much less least better best worse worst high low early late hard easy simple
    real whole own different same important possible able free full open close closed small large real main
    became become becomes every each within found love proud happy sad awful excellent delighted harmed nobody
    smooth embarrassing quickly slowly automatically minutes hours seconds
    """.split()
)

# Vocabulary of software engineering and IT work (the interviews this service runs): boosted like a soft skills
# list, so "release" or "incident" outrank everyday words of the same frequency. Job-specific skills come on top.
TECH_TERMS = frozenset(
    """
    api apis rest graphql grpc http https json xml yaml sql nosql database databases postgres postgresql mysql
    mongodb redis kafka rabbitmq queue queues cache caching cdn latency throughput scalability scaling load
    balancer microservice microservices monolith architecture backend frontend fullstack server servers
    serverless cloud aws azure gcp kubernetes docker container containers terraform ansible helm devops sre
    ci cd pipeline pipelines deploy deployment deployments release releases rollout rollback canary feature
    flag flags testing test tests unit integration regression qa automation bug bugs crash crashes debugging
    profiling performance memory leak concurrency thread threads async race deadlock lock sync synchronization
    offline online mobile ios android swift kotlin java javascript typescript python golang go rust ruby
    php scala c++ c# react angular vue node.js django flask spring rails swiftui compose flutter app apps web
    browser ui ux design accessibility analytics metrics monitoring observability logging logs log tracing
    alerting alert alerts dashboard dashboards incident incidents outage outages postmortem oncall on-call
    security authentication authorization oauth sso saml jwt token tokens encryption decryption key keys
    rotation secret secrets vault credential credentials password passwords tls ssl certificate certificates
    audit audits compliance gdpr privacy vulnerability vulnerabilities firewall penetration phishing
    backup backups recovery disaster replication sharding partition partitions index indexes indexing
    migration migrations schema query queries transaction transactions consistency availability
    algorithm algorithms data structure structures machine learning model models training inference
    ai ml nlp llm etl warehouse spark hadoop airflow streaming batch event events messaging webhook
    git github gitlab review reviews refactoring refactor technical debt agile scrum sprint kanban roadmap
    stakeholder stakeholders requirements specification prototype mvp product customer customers users
    sla slo uptime reliability resilience failover redundancy encryption-at-rest hashing signing
    """.split()
)

_TOKEN_RE = re.compile(r"[a-z][a-z0-9+#]*(?:['.-][a-z0-9+#]+)*")


def _stem(word: str) -> str:
    """Fold simple English plurals so "audit"/"audits" and "query"/"queries" count as one term."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "'s")):
        return word[:-1]
    if word.endswith("'s"):
        return word[:-2]
    return word


_TECH_KEYS = frozenset(_stem(t) for t in TECH_TERMS)


def tokenize(text: str) -> list[str]:
    return [t.strip(".-'") for t in _TOKEN_RE.findall(text.lower())]


@dataclass(slots=True)
class _Term:
    count: int = 0
    seqs: list[int] = field(default_factory=list)
    forms: dict[str, int] = field(default_factory=dict)


@dataclass
class KeywordTracker:
    """Per-speaker keyword counts with relevance; `top(n)` is the ranked list for a `keywords` event.

    relevance = (1 + ln count) * specificity * boost, where specificity is 1 for rare-looking terms
    (longer than 6 letters or containing digits/symbols), 0.8 for other terms and 0.4 for common words;
    boost is `skill_boost` for the job's skills, `tech_boost` for TECH_TERMS, else 1. Work per update is O(words in the segment); `top` is
    O(vocabulary) with the vocabulary capped at `max_terms` (the least frequent terms are evicted).
    """

    skills: Iterable[str] = ()
    skill_boost: float = 2.0
    tech_boost: float = 1.5
    max_terms: int = 5000
    max_seqs: int = 50
    _terms: dict[str, _Term] = field(default_factory=dict, init=False, repr=False)
    _skills: frozenset[str] = field(default=frozenset(), init=False, repr=False)

    def __post_init__(self) -> None:
        self._skills = frozenset(_stem(s.strip().lower()) for s in self.skills if s.strip())

    def _keys(self, text: str) -> Iterator[tuple[str, str]]:
        for tok in tokenize(text):
            if len(tok) < 3 or tok in STOP_WORDS or tok in FILLER_WORDS or tok.isdigit():
                continue
            key = _stem(tok)
            if key in FILLER_WORDS or key in STOP_WORDS:
                continue
            yield tok, key

    def remove(self, text: str, seq: int) -> None:
        """Take back what `update(text, seq)` counted (a revised final replaces its text). O(words + seqs)."""
        for tok, key in self._keys(text):
            term = self._terms.get(key)
            if term is None:  # evicted since
                continue
            term.count -= 1
            if term.forms.get(tok, 0) > 1:
                term.forms[tok] -= 1
            else:
                term.forms.pop(tok, None)
            if seq in term.seqs:
                term.seqs.remove(seq)
            if term.count <= 0 or not term.forms:
                del self._terms[key]

    def update(self, text: str, seq: int) -> None:
        for tok, key in self._keys(text):
            term = self._terms.get(key)
            if term is None:
                if len(self._terms) >= self.max_terms:
                    self._evict()
                term = self._terms[key] = _Term()
            term.count += 1
            term.forms[tok] = term.forms.get(tok, 0) + 1
            if not term.seqs or term.seqs[-1] < seq:
                term.seqs.append(seq)
                del term.seqs[: -self.max_seqs]
            elif seq not in term.seqs:  # a revised earlier segment
                bisect.insort(term.seqs, seq)
                del term.seqs[: -self.max_seqs]

    def _evict(self) -> None:
        victims = heapq.nsmallest(
            max(1, self.max_terms // 10), self._terms.items(), key=lambda kv: kv[1].count
        )
        for key, _ in victims:
            del self._terms[key]

    def relevance(self, key: str, term: _Term) -> float:
        if key in COMMON_WORDS:
            spec = 0.4
        elif len(key) > 6 or not key.isalpha():
            spec = 1.0
        else:
            spec = 0.8
        boost = self.skill_boost if key in self._skills else self.tech_boost if key in _TECH_KEYS else 1.0
        return (1.0 + math.log(term.count)) * spec * boost

    def top(self, n: int = 10) -> list[Keyword]:
        ranked = heapq.nlargest(
            n, self._terms.items(), key=lambda kv: (self.relevance(kv[0], kv[1]), kv[1].count, kv[1].seqs[-1] if kv[1].seqs else -1)
        )
        return [
            Keyword(
                term=max(t.forms.items(), key=lambda f: (f[1], -len(f[0])))[0],
                count=t.count,
                relevance=self.relevance(k, t),
                seqs=tuple(t.seqs),
            )
            for k, t in ranked
        ]
