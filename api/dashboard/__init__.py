"""The dashboard at /ui: server-rendered pages (Jinja2, autoescaped) with htmx, see README "Dashboard"."""

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from api.dashboard.routes import router


def mount_dashboard(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(packages=[("api.dashboard", "static")]), name="dashboard-static")
