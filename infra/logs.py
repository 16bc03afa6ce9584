"""Logging: JSON lines when not on a terminal (for log shippers), readable lines on one."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else came in through `extra=` and is worth printing
# (but uvicorn's `color_message`: the message again, with terminal colour codes).
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message",
}  # fmt: skip


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{key}={value}" for key, value in _extras(record).items())
        return f"{super().format(record)} {extras}".rstrip()


def configure_logging(level: str, *, json_lines: bool | None = None) -> None:
    use_json = not sys.stderr.isatty() if json_lines is None else json_lines
    handler = logging.StreamHandler()
    text = TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(JsonFormatter() if use_json else text)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if level != "DEBUG":
        # arq logs two lines per job; storyflow's own run lines carry more and are enough.
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
        # The openai SDK's HTTP client logs each request; the worker's run lines say what matters.
        for name in ("httpx", "httpx2", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)
