"""Log output: text lines or one JSON object per line (python-json-logger), on stderr.

JSON records carry `ts` (UTC, milliseconds), `level`, `logger`, `msg` and, for an exception, `exc`. Secrets
never reach a log line: settings keep them out of their repr, and adapters redact credentials in URLs.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

# aioice/aiortc log every STUN check and pymongo every heartbeat: never below WARNING.
NOISY_LOGGERS = ("aioice", "aiortc", "pymongo")


class JsonFormatter(_LibraryJsonFormatter):
    def __init__(self) -> None:
        super().__init__("{levelname}{name}{message}", style="{",
                         rename_fields={"levelname": "level", "name": "logger", "message": "msg",
                                        "exc_info": "exc"},
                         json_ensure_ascii=False)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["ts"] = dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level]))
