"""Turns the `detail` of a FastAPI error body into one readable line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def describe_detail(detail: Any) -> str:
    if isinstance(detail, str):
        return _one_line(detail)
    if isinstance(detail, list):
        return "; ".join(describe_detail(item) for item in detail) or "no details"
    if isinstance(detail, Mapping):
        return _describe_mapping(detail)
    if detail is None:
        return "no details"
    return _one_line(json.dumps(detail, default=str))


def _describe_mapping(detail: Mapping[str, Any]) -> str:
    if "msg" in detail:
        return _describe_validation_error(detail)
    text = detail.get("message") or detail.get("detail")
    if text is None:
        return _one_line(json.dumps(detail, default=str))
    extras = {key: value for key, value in detail.items() if key not in {"message", "detail", "type"}}
    suffix = f" ({_describe_extras(extras)})" if extras else ""
    return f"{describe_detail(text)}{suffix}"


def _describe_validation_error(error: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc") or ())
    message = _one_line(str(error["msg"]))
    return f"{location}: {message}" if location else message


def _describe_extras(extras: Mapping[str, Any]) -> str:
    parts = []
    for key, value in extras.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key}: {shown}")
    return _one_line("; ".join(parts))


def _one_line(text: str) -> str:
    return " ".join(text.split())
