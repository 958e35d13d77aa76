"""Scorecard providers: three hosted LLM APIs through their official SDKs, and the local heuristic analyser.

Every provider implements `adapters.analysis_jobs.AnalysisProvider`: `await provider.analyse(turns, rubric)` ->
`ProviderAnswer` (the validated, not yet verified, scorecard and token counts) or `ProviderError`.

* `OpenAIProvider`: `openai` chat completions with a JSON-schema `response_format` (any OpenAI-compatible server,
  vLLM included, at `OPENAI_BASE_URL`).
* `AnthropicProvider`: `anthropic` Messages API; the scorecard comes back as the input of a forced tool call, the
  Messages API's way of returning schema-shaped JSON.
* `HuggingFaceProvider`: `huggingface_hub` `AsyncInferenceClient.chat_completion` with a JSON-schema response
  format, which also speaks to a self-hosted TGI or vLLM server at `HF_BASE_URL`.
* `HeuristicProvider`: no key, no network; rubric terms in the candidate's answers, the Q<->A structure, and quotes
  of real segments. Labelled `kind: "heuristic"`.

Resilience is the same for the three LLMs (`Resilience`): the SDKs' own retries are off and tenacity retries 429
and 5xx (and timeouts, lost connections) with exponential backoff, waiting what `Retry-After` asks when it is
given (up to `max_wait_s`); each attempt has `timeout_s`; a purgatory circuit breaker per provider opens after
`breaker_threshold` failed analyses in a row and lets one try through after `breaker_ttl_s`. A malformed answer
(not JSON, or not the schema) is a failure, not retried (the same prompt tends to give the same shape again).

Providers see only the pseudonymised transcript (`domain.analysis.conversation`): turn numbers, "Candidate",
"Interviewer 1" and the text with names and contact details replaced; never a participant id or personal field.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from domain.analysis import (
    SCORE_MAX,
    Citation,
    ClaimedCompetency,
    ClaimedScorecard,
    Competency,
    Turn,
    content_tokens,
    stem,
    structure,
    transcript_text,
)
from domain.model import RECOMMENDATIONS

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# The one output schema (validated with pydantic; its JSON Schema is what the providers are asked to follow)


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EvidenceOut(_Out):
    seq: int = Field(description="the [number] of the transcript line quoted")
    quote: Annotated[str, Field(min_length=1, max_length=600)] = Field(description="verbatim words from that line")


class CompetencyOut(_Out):
    name: str
    score: Annotated[float, Field(ge=0, le=SCORE_MAX)]
    rationale: Annotated[str, Field(max_length=2000)] = ""
    evidence: Annotated[list[EvidenceOut], Field(max_length=10)] = []


class ScorecardOut(_Out):
    competencies: list[CompetencyOut]
    strengths: Annotated[list[Annotated[str, Field(max_length=500)]], Field(max_length=10)] = []
    improvements: Annotated[list[Annotated[str, Field(max_length=500)]], Field(max_length=10)] = []
    recommendation: Literal[RECOMMENDATIONS]  # type: ignore[valid-type]  # domain tuple
    overall: Annotated[float, Field(ge=0, le=100)]

    def claimed(self) -> ClaimedScorecard:
        return ClaimedScorecard(
            [ClaimedCompetency(c.name, c.score, c.rationale, [Citation(e.seq, e.quote) for e in c.evidence])
             for c in self.competencies], list(self.strengths), list(self.improvements), self.recommendation,
            self.overall)


SCHEMA: dict[str, Any] = ScorecardOut.model_json_schema()

SYSTEM_PROMPT = (
    "You assess a job interview transcript for a human recruiter, who decides. Score only what the candidate "
    "said. For each competency of the rubric give a score from 0 to 5, a short rationale and evidence: each item "
    "is the [number] of a transcript line and words quoted verbatim from that line. Evidence that is not "
    "verbatim is discarded, and a competency without evidence gets no score. Do not infer emotion, personality, "
    "age, gender, origin or health; judge the content of the answers only. Also give strengths, improvements, an "
    "advisory recommendation (one of " + ", ".join(RECOMMENDATIONS) + ") and an overall score from 0 to 100. "
    "Answer with JSON only, following this schema: " + json.dumps(SCHEMA, separators=(",", ":")))


def user_prompt(turns: Sequence[Turn], rubric: Sequence[Competency]) -> str:
    return ("RUBRIC: " + json.dumps([c.to_dict() for c in rubric], ensure_ascii=False) + "\n"
            "TRANSCRIPT:\n" + transcript_text(turns))


# ---------------------------------------------------------------------------------------------------------
# Results and errors


@dataclass(slots=True)
class ProviderAnswer:
    scorecard: ClaimedScorecard
    tokens_in: int = 0
    tokens_out: int = 0
    attempts: int = 1


class ProviderError(Exception):
    """A provider call that failed: `kind` is rate_limited, server_error, timeout, connection, malformed,
    circuit_open or refused (a 4xx that retrying cannot fix)."""

    def __init__(self, kind: str, message: str, *, retry_after_s: float | None = None, attempts: int = 0) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s
        self.attempts = attempts

    @property
    def retryable(self) -> bool:
        return self.kind in ("rate_limited", "server_error", "timeout", "connection")


def parse_answer(raw: str | dict[str, Any] | None) -> ClaimedScorecard:
    """A provider's JSON (text or an already decoded object) as a claimed scorecard, or ProviderError(malformed)."""
    try:
        data = json.loads(_unfenced(raw)) if isinstance(raw, str) else raw
        return ScorecardOut.model_validate(data).claimed()
    except PydanticValidationError as exc:
        # where and what, never the values: they quote the transcript, and this message is logged and stored
        where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['type']}"
                          for e in exc.errors(include_url=False, include_input=False)[:5])
        raise ProviderError("malformed", f"answer is not a scorecard: {where}"[:200]) from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise ProviderError("malformed", f"answer is not a scorecard: {str(exc)[:200]}") from None


def _unfenced(text: str) -> str:
    # Some chat models wrap JSON in a ``` fence even when asked not to.
    m = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, re.DOTALL)
    return m.group(1) if m else text


def retry_after_s(headers: Any) -> float | None:
    """Seconds from a `Retry-After` (delta seconds; an HTTP date is not honoured, it needs a clock) or
    `retry-after-ms` header."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    return None


def status_error(status: int, headers: Any, message: str) -> ProviderError:
    if status == 429:
        return ProviderError("rate_limited", message, retry_after_s=retry_after_s(headers))
    if status >= 500:
        return ProviderError("server_error", message, retry_after_s=retry_after_s(headers))
    if status == 408:
        return ProviderError("timeout", message)
    return ProviderError("refused", f"HTTP {status}: {message}")


def sdk_error(sdk: Any, exc: Exception) -> ProviderError:
    """An `openai` or `anthropic` SDK exception as ours (both SDKs have the same exception classes)."""
    if isinstance(exc, sdk.APIStatusError):
        return status_error(exc.status_code, exc.response.headers, exc.message)
    if isinstance(exc, sdk.APITimeoutError):  # before APIConnectionError, its base class
        return ProviderError("timeout", "request timed out")
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderError("connection", str(exc))
    return ProviderError("malformed", str(exc)[:200])  # e.g. a body that is not JSON at all


# ---------------------------------------------------------------------------------------------------------
# Timeout, retries and the circuit breaker, shared by the LLM providers


@dataclass(slots=True)
class Resilience:
    timeout_s: float = 60.0
    attempts: int = 3
    min_wait_s: float = 0.5
    max_wait_s: float = 20.0
    breaker_threshold: int = 3
    breaker_ttl_s: float = 60.0


class Breakers:
    """One purgatory circuit breaker per provider name (in process memory)."""

    def __init__(self, threshold: int, ttl_s: float) -> None:
        from purgatory import AsyncCircuitBreakerFactory

        self.factory = AsyncCircuitBreakerFactory(default_threshold=threshold, default_ttl=ttl_s,
                                                  exclude=[asyncio.CancelledError])
        self.opened: dict[str, int] = {}
        self.factory.add_listener(self._event)

    def _event(self, name: str, event_type: str, event: Any) -> None:
        if event_type == "state_changed":
            log.warning("analysis provider %s: circuit %s", name, getattr(event, "state", "?"))
            if getattr(event, "state", "") == "opened":
                self.opened[name] = self.opened.get(name, 0) + 1

    async def state(self, name: str) -> str:
        brk = await self.factory.get_breaker(name)
        return str(brk.context.state)


RawCall = Callable[[str, str], Awaitable[ProviderAnswer]]  # (system, user) -> answer, raising ProviderError


class LlmProvider:
    """A hosted model behind timeout, retries and a circuit breaker. `call` is one attempt with the SDK."""

    kind = "llm"

    def __init__(self, name: str, model: str, call: RawCall, resilience: Resilience, breakers: Breakers,
                 close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.name = name
        self.model = model
        self._call = call
        self._close = close
        self.resilience = resilience
        self.breakers = breakers

    async def analyse(self, turns: Sequence[Turn], rubric: Sequence[Competency]) -> ProviderAnswer:
        from purgatory.domain.model import OpenedState

        user = user_prompt(turns, rubric)
        r = self.resilience
        try:
            brk = await self.breakers.factory.get_breaker(self.name, r.breaker_threshold, r.breaker_ttl_s)
            async with brk:
                return await self._with_retries(user)
        except OpenedState:
            raise ProviderError("circuit_open", f"{self.name} failed {r.breaker_threshold} times in a row; not "
                                f"called for {r.breaker_ttl_s:g} s") from None

    async def aclose(self) -> None:
        if self._close is not None:
            await self._close()

    async def _with_retries(self, user: str) -> ProviderAnswer:
        r = self.resilience
        backoff = wait_exponential_jitter(multiplier=r.min_wait_s, max=r.max_wait_s, jitter=r.min_wait_s)

        def wait(state: Any) -> float:
            exc = state.outcome.exception() if state.outcome else None
            asked = exc.retry_after_s if isinstance(exc, ProviderError) else None
            return min(r.max_wait_s, asked) if asked is not None else float(backoff(state))

        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(r.attempts), wait=wait, reraise=True,
                    retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable)):
                with attempt:
                    attempts += 1
                    try:
                        async with asyncio.timeout(r.timeout_s):
                            answer = await self._call(SYSTEM_PROMPT, user)
                    except TimeoutError:
                        raise ProviderError("timeout", f"no answer within {r.timeout_s:g} s") from None
                    answer.attempts = attempts
                    return answer
        except ProviderError as exc:
            exc.attempts = attempts
            raise
        raise AssertionError("unreachable")


def _usage(usage: Any, names: tuple[str, str]) -> tuple[int, int]:
    if usage is None:
        return 0, 0
    return int(getattr(usage, names[0], 0) or 0), int(getattr(usage, names[1], 0) or 0)


def openai_provider(base_url: str | None, api_key: str | None, model: str, resilience: Resilience,
                    breakers: Breakers) -> LlmProvider:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=0,
                                timeout=resilience.timeout_s)

    async def call(system: str, user: str) -> ProviderAnswer:
        try:
            resp = await client.chat.completions.create(
                model=model, temperature=0,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "scorecard", "schema": SCHEMA, "strict": False}})
        except openai.APIError as exc:
            raise sdk_error(openai, exc) from None
        content = resp.choices[0].message.content if resp.choices else None
        tokens = _usage(resp.usage, ("prompt_tokens", "completion_tokens"))
        return ProviderAnswer(parse_answer(content), *tokens)

    return LlmProvider("openai", model, call, resilience, breakers, client.close)


TOOL = "record_scorecard"


def anthropic_provider(base_url: str | None, api_key: str | None, model: str, resilience: Resilience,
                       breakers: Breakers) -> LlmProvider:
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=base_url, api_key=api_key or "unused", max_retries=0,
                                      timeout=resilience.timeout_s)

    async def call(system: str, user: str) -> ProviderAnswer:
        try:
            resp = await client.messages.create(
                model=model, max_tokens=4096, system=system,
                messages=[{"role": "user", "content": user}],
                tools=[{"name": TOOL, "description": "Record the interview scorecard.", "input_schema": SCHEMA}],
                tool_choice={"type": "tool", "name": TOOL})
        except anthropic.APIError as exc:
            raise sdk_error(anthropic, exc) from None
        tool_input: dict[str, Any] | str | None = next(
            (b.input for b in resp.content if isinstance(b, anthropic.types.ToolUseBlock)), None)
        if tool_input is None:  # a model may answer in text instead of calling the tool
            tool_input = "".join(b.text for b in resp.content if isinstance(b, anthropic.types.TextBlock))
        tokens = _usage(resp.usage, ("input_tokens", "output_tokens"))
        return ProviderAnswer(parse_answer(tool_input), *tokens)

    return LlmProvider("anthropic", model, call, resilience, breakers, client.close)


def huggingface_provider(base_url: str | None, token: str | None, model: str, resilience: Resilience,
                         breakers: Breakers) -> LlmProvider:
    from huggingface_hub import (
        AsyncInferenceClient,
        ChatCompletionInputJSONSchema,
        ChatCompletionInputResponseFormatJSONSchema,
    )
    from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

    # base_url: a TGI/vLLM server (the client appends /v1/chat/completions); without it, the HF router by model
    client = (AsyncInferenceClient(base_url=base_url, api_key=token, timeout=resilience.timeout_s) if base_url
              else AsyncInferenceClient(model=model, api_key=token, timeout=resilience.timeout_s))

    response_format = ChatCompletionInputResponseFormatJSONSchema(
        type="json_schema", json_schema=ChatCompletionInputJSONSchema(name="scorecard", schema=SCHEMA))

    async def call(system: str, user: str) -> ProviderAnswer:
        import httpx2

        try:
            resp = await client.chat_completion(
                [{"role": "system", "content": system}, {"role": "user", "content": user}],
                model=model if base_url else None, temperature=0, max_tokens=4096,
                response_format=response_format)
        except HfHubHTTPError as exc:
            response = exc.response
            status = response.status_code if response is not None else 0
            raise status_error(status, response.headers if response is not None else None, str(exc)[:200]) from None
        except InferenceTimeoutError:
            raise ProviderError("timeout", "request timed out") from None
        except httpx2.TransportError as exc:
            raise ProviderError("connection", str(exc)) from None
        except (ValueError, KeyError, TypeError) as exc:  # a body the client could not read as a completion
            raise ProviderError("malformed", str(exc)[:200]) from None
        content = resp.choices[0].message.content if resp.choices else None
        tokens = _usage(resp.usage, ("prompt_tokens", "completion_tokens"))
        return ProviderAnswer(parse_answer(content), *tokens)

    return LlmProvider("huggingface", model, call, resilience, breakers, client.close)


# ---------------------------------------------------------------------------------------------------------
# The local heuristic analyser

_SENTENCE_RE = re.compile(r"[^.!?]+[.!?]?")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_RE.findall(text) if len(s.split()) >= 3]


class HeuristicProvider:
    """Scores each competency by how many of its terms the candidate's answers use (stemmed), with the sentences
    that use them as evidence; communication by answer length and directness (the Q<->A structure). Text
    sentiment (VADER) is reported in the rationale, never scored. It reads words, not meaning: a painful outage
    described in detail scores like a success."""

    name = "heuristic"
    model = "terms+structure-v1"
    kind = "heuristic"

    async def analyse(self, turns: Sequence[Turn], rubric: Sequence[Competency]) -> ProviderAnswer:
        # CPU work (~150 ms for a 45-minute transcript): in a thread, so live rooms' audio is not held up
        return ProviderAnswer(await asyncio.to_thread(self.score, turns, rubric))

    def score(self, turns: Sequence[Turn], rubric: Sequence[Competency]) -> ClaimedScorecard:
        from pipeline.analysis import text_sentiment

        answers = [t for t in turns if t.role == "candidate"]
        comps: list[ClaimedCompetency] = []
        strengths: list[str] = []
        improvements: list[str] = []
        for comp in rubric:
            if not comp.terms:
                comps.append(self._communication(turns, answers, text_sentiment))
                continue
            wanted = {stem(w) for term in comp.terms for w in term.lower().split()}
            found: set[str] = set()
            evidence: list[Citation] = []
            for t in answers:
                for sentence in _sentences(t.text):
                    hit = content_tokens(sentence) & wanted
                    if hit:
                        found |= hit
                        if len(evidence) < 4:
                            evidence.append(Citation(t.index, sentence))
            coverage = len(found) / len(wanted) if wanted else 0.0
            score = round(min(SCORE_MAX, 1.0 + 4.0 * min(1.0, coverage * 1.25)), 1) if found else 0.0
            missing = sorted(wanted - found)
            comps.append(ClaimedCompetency(comp.name, score,
                                           f"mentions {', '.join(sorted(found)) or 'none'} of the rubric terms"
                                           + (f"; not {', '.join(missing[:8])}" if missing else ""), evidence))
            if score >= 4:
                strengths.append(f"{comp.name}: talks concretely about {', '.join(sorted(found)[:5])}")
            elif missing:
                improvements.append(f"{comp.name}: no mention of {', '.join(missing[:5])}")
        scored = [c.score for c in comps if c.evidence]
        overall = round(20.0 * statistics.mean(scored), 1) if scored else 0.0
        recommendation = "hire" if overall >= 75 else "undecided" if overall >= 50 else "no_hire"
        return ClaimedScorecard(comps, strengths, improvements, recommendation, overall)

    @staticmethod
    def _communication(turns: Sequence[Turn], answers: Sequence[Turn],
                       sentiment: Callable[[str], float]) -> ClaimedCompetency:
        s = structure(turns)
        answered = [p for p in s.pairs if p.answer_words]
        if not answers or not answered:
            return ClaimedCompetency("communication", 0.0, "no answers", [])
        lengths = [p.answer_words for p in answered]
        # 15-150 words answers a question without rambling; each pair outside that range costs
        in_range = sum(1 for n in lengths if 15 <= n <= 150) / len(lengths)
        unanswered = sum(1 for p in s.pairs if not p.answer_words) / max(1, len(s.pairs))
        score = round(max(0.0, min(SCORE_MAX, 1.0 + 4.0 * in_range - 2.0 * unanswered)), 1)
        longest = max(answers, key=lambda t: t.words)
        quote = (_sentences(longest.text) or [longest.text])[0]
        tone = statistics.mean(sentiment(t.text) for t in answers)
        return ClaimedCompetency(
            "communication", score,
            f"{len(answered)} answered questions, median answer {statistics.median(lengths):g} words, "
            f"{in_range:.0%} of answers 15-150 words; tone of words {tone:+.2f} (shown, not scored)",
            [Citation(longest.index, quote)])


def elapsed(since: float) -> float:
    return time.perf_counter() - since
