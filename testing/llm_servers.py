"""Loopback servers speaking the wire protocols of the three scorecard providers, scripted per request.

`ScriptedLLM("openai" | "anthropic" | "huggingface")` answers `POST /v1/chat/completions` (OpenAI, and the
OpenAI-compatible messages API of TGI/vLLM that `huggingface_hub` uses) or `POST /v1/messages` (Anthropic, the
scorecard as a `tool_use` block) as the real services do, with their auth headers, error bodies and `Retry-After`.

Each request takes the next behaviour from `script` (then `default`):
    "good"              a scorecard quoting real lines of the transcript it was sent
    ("slow", seconds)   the same, after `seconds`
    ("429", seconds)    429 with `Retry-After: <seconds>`
    "500"               a server error
    "malformed"         200 with an answer that is not JSON
    "invented"          a scorecard whose quotes nobody said (plus one real one for the first competency)
The "good" answer scores every competency `score` and quotes the first candidate line using one of its terms.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any

from testing.net import ThreadedHttpServer

Behaviour = str | tuple[str, float]
_LINE_RE = re.compile(r"^\[(\d+)\] ([^:]+): (.*)$")
INVENTED = "I single-handedly rewrote the payment kernel in assembly over one weekend"


def scorecard(user: str, *, score: float = 4.0, invented: bool = False) -> dict[str, Any]:
    """A scorecard for the prompt `user` (its RUBRIC line and transcript lines)."""
    rubric: list[dict[str, Any]] = []
    lines: list[tuple[int, str, str]] = []
    for line in user.splitlines():
        if line.startswith("RUBRIC: "):
            rubric = json.loads(line[len("RUBRIC: "):])
        m = _LINE_RE.match(line)
        if m:
            lines.append((int(m.group(1)), m.group(2), m.group(3)))
    answers = [(n, text) for n, label, text in lines if label.startswith("Candidate")]
    competencies = []
    for k, comp in enumerate(rubric):
        terms = [t.lower() for t in comp.get("terms", [])]
        hit = next(((n, t) for n, t in answers if any(term in t.lower() for term in terms)), None)
        n, text = hit or (answers[0] if answers else (0, ""))
        quote = " ".join(text.split()[:8])
        evidence = [{"seq": n, "quote": quote}] if quote else []
        if invented:
            evidence = ([{"seq": n, "quote": quote}] if k == 0 and quote else []) + [{"seq": n, "quote": INVENTED}]
        competencies.append({"name": comp["name"], "score": score, "rationale": f"scripted for {comp['name']}",
                             "evidence": evidence})
    return {"competencies": competencies, "strengths": ["answers with concrete examples"],
            "improvements": ["quantify the results"], "recommendation": "hire" if score >= 3 else "no_hire",
            "overall": score * 20}


class ScriptedLLM(ThreadedHttpServer):
    def __init__(self, protocol: str, *, script: list[Behaviour] | None = None, default: Behaviour = "good",
                 score: float = 4.0, api_key: str = "test-llm-key", model: str = "scripted-1",
                 host: str = "127.0.0.1") -> None:
        if protocol not in ("openai", "anthropic", "huggingface"):
            raise ValueError(f"unknown protocol {protocol!r}")
        self.protocol = protocol
        self.script: deque[Behaviour] = deque(script or [])
        self.default = default
        self.score = score
        self.api_key = api_key
        self.model = model
        self.requests: list[dict[str, Any]] = []  # {"at": monotonic, "path", "body"}
        self._lock = threading.Lock()
        super().__init__(self._handler(), host, 0, f"llm-{protocol}")

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        root = f"http://{host}:{port}"
        return root + "/v1" if self.protocol == "openai" else root  # the other SDKs append /v1/...

    def then(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self.script.extend(behaviours)

    def _next(self) -> Behaviour:
        with self._lock:
            return self.script.popleft() if self.script else self.default

    # -- wire ---------------------------------------------------------------------------------------------------

    def _error(self, status: int, message: str) -> dict[str, Any]:
        kind = {429: "rate_limit_error", 401: "authentication_error", 404: "not_found_error"}.get(status, "api_error")
        if self.protocol == "anthropic":
            return {"type": "error", "error": {"type": kind, "message": message}}
        return {"error": {"message": message, "type": kind, "code": status}}

    def _answer(self, card: dict[str, Any] | None, text: str | None) -> dict[str, Any]:
        usage_in, usage_out = 1200, 300
        if self.protocol == "anthropic":
            content: list[dict[str, Any]] = ([{"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:12],
                                               "name": "record_scorecard", "input": card}] if card is not None
                                             else [{"type": "text", "text": text or ""}])
            return {"id": "msg_" + uuid.uuid4().hex[:12], "type": "message", "role": "assistant",
                    "model": self.model, "content": content,
                    "stop_reason": "tool_use" if card is not None else "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": usage_in, "output_tokens": usage_out}}
        return {"id": "chatcmpl-" + uuid.uuid4().hex[:12], "object": "chat.completion", "created": int(time.time()),
                "model": self.model, "system_fingerprint": "scripted",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant",
                                         "content": json.dumps(card) if card is not None else text}}],
                "usage": {"prompt_tokens": usage_in, "completion_tokens": usage_out,
                          "total_tokens": usage_in + usage_out}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                path = self.path.split("?")[0]
                server.requests.append({"at": time.monotonic(), "path": path, "body": body})
                expected = "/v1/messages" if server.protocol == "anthropic" else "/v1/chat/completions"
                if path != expected:
                    self._send(404, server._error(404, f"no route {path}"))
                    return
                # Anthropic's SDK sends `x-api-key` (1.x) or `Authorization: Bearer` (2.x); the others the latter
                key = (self.headers.get("x-api-key") if server.protocol == "anthropic" else None) or \
                    self.headers.get("Authorization", "").removeprefix("Bearer ")
                if key != server.api_key:
                    self._send(401, server._error(401, "invalid api key"))
                    return
                if server.protocol == "anthropic":
                    user = body["messages"][-1]["content"]
                else:
                    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
                behaviour = server._next()
                kind, arg = (behaviour, 0.0) if isinstance(behaviour, str) else behaviour
                if kind == "slow":
                    time.sleep(arg)
                    kind = "good"
                if kind == "429":
                    self._send(429, server._error(429, "rate limited"), {"Retry-After": f"{arg:g}"})
                elif kind == "500":
                    self._send(500, server._error(500, "internal error"))
                elif kind == "malformed":
                    self._send(200, server._answer(None, "Sure! Here is the scorecard: {competencies: [oops"))
                else:
                    self._send(200, server._answer(scorecard(user, score=server.score,
                                                             invented=kind == "invented"), None))

        return Handler
