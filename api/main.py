"""Builds the FastAPI app: clients are made in the lifespan and kept on app.state."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from agents.registry import load_catalog
from api.dashboard import mount_dashboard
from api.errors import install_error_handlers
from api.event_fanout import EventFanout
from api.routes import batches, docs, events, flows, health, memory, metrics, runs, steps, workers
from api.routes.swagger import mount_swagger
from api.waiting import FinishedRuns
from infra import VERSION
from infra.redis import create_redis
from infra.settings import Settings
from runs.batches import BatchStore
from runs.store import RunStore

logger = logging.getLogger("storyflow.api")


def create_app(settings: Settings | None = None, *, freeze_gc: bool = False) -> FastAPI:
    """The app; `freeze_gc` (the API process, not tests that build many apps in one process): once
    started, what is loaded lives as long as the process, out of the collector's way, so that a full
    collection does not stop the event loop for long."""
    settings = settings or Settings()
    if not settings.redis_url:
        raise RuntimeError("STORYFLOW_REDIS_URL is not set (storyflow up starts an embedded Redis for you)")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert settings.redis_url
        if not settings.auth_enabled:
            logger.warning("STORYFLOW_API_KEYS is unset: authentication is off, every caller is tenant 'default'")
        app.state.settings = settings
        app.state.catalog = load_catalog(settings.extra_agent_modules, settings.extra_agent_dirs)
        app.state.redis = create_redis(settings.redis_url, max_connections=settings.redis_max_connections)
        app.state.store = RunStore(
            app.state.redis,
            result_ttl=settings.result_ttl,
            max_queued=settings.max_queued_runs,
            max_active_per_tenant=settings.max_active_runs_per_tenant,
            submissions_per_minute=settings.submissions_per_minute,
        )
        app.state.batches = BatchStore(app.state.redis, result_ttl=settings.result_ttl)
        app.state.finished_runs = FinishedRuns(app.state.redis)
        app.state.finished_runs.start()
        app.state.event_fanout = EventFanout(settings.redis_url, app.state.redis, settings.max_streams_per_tenant)
        app.state.event_fanout.start()
        if freeze_gc:
            gc.freeze()
        try:
            yield
        finally:
            await app.state.event_fanout.stop()
            await app.state.finished_runs.stop()
            await app.state.redis.aclose()

    app = FastAPI(
        title="storyflow", version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
        max_body_size=settings.max_body_bytes,  # 413 whether the body has a Content-Length or comes chunked
    )  # fmt: skip
    install_error_handlers(app)
    for module in (runs, steps, events, docs, memory, flows, health, workers, metrics):
        app.include_router(module.router)
    app.include_router(batches.build_router(settings.max_batches_body_bytes))
    mount_dashboard(app)
    mount_swagger(app)
    return app


def create_served_app() -> FastAPI:
    """What `storyflow api` serves (uvicorn's factory)."""
    return create_app(freeze_gc=True)
