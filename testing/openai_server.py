"""A real OpenAI-compatible speech-to-text server on loopback, decoding with our local engine.

Implements `POST /v1/audio/transcriptions` (multipart form: file, model, language, prompt, response_format,
timestamp_granularities[]) well enough for the `openai` client: `json`, `text` and `verbose_json` answers,
bearer-key auth, 400 on undecodable audio, 404 on an unknown model. Used by the OpenAI adapter's tests;
also runnable: `python -m testing.openai_server --port 8000`.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from pipeline.audio_file import read_audio
from pipeline.transcript import SpeechToText
from testing.net import ThreadedHttpServer

log = logging.getLogger(__name__)


def parse_multipart(content_type: str, body: bytes) -> dict[str, list[tuple[bytes, str | None]]]:
    """Form fields of a multipart/form-data body: name -> [(value bytes, filename)]."""
    if not content_type.startswith("multipart/form-data"):
        raise ValueError("expected multipart/form-data")
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    msg = parser.parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise ValueError("malformed multipart body")
    fields: dict[str, list[tuple[bytes, str | None]]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        fields.setdefault(str(name), []).append((payload, part.get_filename()))
    return fields


class OpenAICompatServer(ThreadedHttpServer):
    """`with OpenAICompatServer(stt) as srv: OpenAI(base_url=srv.base_url, api_key=srv.api_key)`."""

    def __init__(self, stt: SpeechToText, *, host: str = "127.0.0.1", port: int = 0, api_key: str = "test-key",
                 models: tuple[str, ...] = ("whisper-1",), verbose_json: bool = True) -> None:  # fmt: skip
        self.stt = stt
        self.api_key = api_key
        self.models = models
        self.verbose_json = verbose_json  # False behaves like servers that only answer plain json
        self.requests: list[dict[str, Any]] = []  # what the server saw (for the tests' assertions)
        self._lock = threading.Lock()  # one decode at a time, like a single-model server
        super().__init__(self._handler(), host, port, "openai-compat")

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def transcribe_form(self, fields: dict[str, list[tuple[bytes, str | None]]]) -> tuple[int, Any, str]:
        """(status, body, content type) for one request's form fields."""

        def field(name: str, default: str = "") -> str:
            vals = fields.get(name)
            return vals[0][0].decode("utf-8") if vals else default

        if "file" not in fields:
            return _error(400, "missing 'file'")
        model = field("model")
        if model not in self.models:
            return _error(404, f"model '{model}' not found")
        fmt = field("response_format", "json")
        grans = [v.decode() for v, _ in fields.get("timestamp_granularities[]", [])]
        self.requests.append({"model": model, "response_format": fmt, "prompt": field("prompt") or None,
                              "language": field("language") or None, "timestamp_granularities": grans})  # fmt: skip
        if fmt == "verbose_json" and not self.verbose_json:
            return _error(400, "response_format 'verbose_json' is not compatible with this model")
        try:
            audio = read_audio(fields["file"][0][0], rate=16000, mono=True)
        except ValueError as exc:
            return _error(400, f"could not decode audio: {exc}")
        with self._lock:
            tr = self.stt.transcribe(audio.pcm, prompt=field("prompt") or None)
        if fmt == "text":
            return 200, tr.text, "text/plain"
        if fmt != "verbose_json":
            return 200, {"text": tr.text}, "application/json"
        body: dict[str, Any] = {
            "task": "transcribe",
            "language": "english" if tr.language == "en" else tr.language,
            "duration": audio.duration_s,
            "text": tr.text,
        }
        if "segment" in grans or not grans:
            body["segments"] = (
                [
                    {
                        "id": 0,
                        "seek": 0,
                        "start": 0.0,
                        "end": audio.duration_s,
                        "text": tr.text,
                        "tokens": [],
                        "temperature": 0.0,
                        "avg_logprob": tr.avg_logprob,
                        "compression_ratio": tr.compression_ratio,
                        "no_speech_prob": tr.no_speech_prob,
                    }
                ]  # fmt: skip
                if tr.text
                else []
            )
        if "word" in grans:
            body["words"] = [{"word": w.word, "start": w.start_s, "end": w.end_s} for w in tr.words]
        return 200, body, "application/json"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                log.debug("openai-compat: " + format, *args)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/audio/transcriptions":
                    return self._send(*_error(404, f"no route {self.path}"))
                if self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send(*_error(401, "invalid api key", "invalid_api_key"))
                try:
                    fields = parse_multipart(self.headers.get("Content-Type", ""), body)
                except ValueError as exc:
                    return self._send(*_error(400, str(exc)))
                try:
                    self._send(*server.transcribe_form(fields))
                except Exception as exc:  # a real server answers 500, it does not drop the connection
                    log.exception("transcription failed")
                    self._send(*_error(500, f"{type(exc).__name__}: {exc}", "server_error"))

            def _send(self, status: int, body: Any, ctype: str) -> None:
                data = (
                    body.encode()
                    if isinstance(body, str) and ctype == "text/plain"
                    else json.dumps(body).encode()
                )
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _error(status: int, message: str, code: str | None = None) -> tuple[int, Any, str]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return (
        status,
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        "application/json",
    )


def main() -> None:
    from adapters.stt_whisper import LocalWhisper

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default="test-key")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    srv = OpenAICompatServer(LocalWhisper(), port=args.port, api_key=args.api_key)
    log.info("listening on %s", srv.base_url)
    srv._httpd.serve_forever()


if __name__ == "__main__":
    main()
