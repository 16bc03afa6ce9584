"""The dashboard at /ui: server-rendered pages (Jinja2, htmx), see README "Dashboard"."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/ui", include_in_schema=False)
