"""The dashboard's pages and actions under /ui: server-rendered (Jinja2, autoescaped), live parts
refreshed by htmx, the run's tokens from a same-origin event stream. Actions call the same code
as the JSON API and come back to the page they were made on."""

from __future__ import annotations

import re
from datetime import datetime
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
import orjson
from fastapi import APIRouter, Depends, Form, Header, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from api.dashboard import figures
from api.dashboard.session import (
    Viewer,
    anonymous_viewer,
    csrf_ok,
    current_viewer,
    end_session,
    same_origin,
    set_session,
    viewer_for_key,
)
from api.deps import CatalogDep, RedisDep, SettingsDep, StoreDep
from api.routes import batches as batch_routes
from api.routes.batches import get_batches
from api.routes.events import FINISHED, STREAM_ID
from api.routes.events import run_events as api_run_events
from api.routes.runs import cancel_run
from api.routes.steps import answer_input, retry_run
from api.routes.workers import live_workers
from api.schemas import InputRequest, RetryRequest
from infra.keys import ID_PATTERN
from memory import store as memory_store
from runs.batches import BatchStore
from runs.model import JOB_ID, RunStatus

router = APIRouter(prefix="/ui", include_in_schema=False)
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(files("api.dashboard") / "templates")), autoescape=True, enable_async=False
)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
STATUSES = [status.value for status in RunStatus]
UNFINISHED = {RunStatus.QUEUED, RunStatus.IN_PROGRESS, RunStatus.AWAITING_INPUT}
ID = re.compile(ID_PATTERN)


def secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def render(request: Request, viewer: Viewer | None, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(viewer=viewer, path=request.url.path, **context)
    response = HTMLResponse(html, status_code=status)
    if viewer is not None and getattr(request.state, "new_session", False):
        set_session(response, request, request.app.state.settings, viewer)
    return secure_headers(response)  # type: ignore[return-value]


async def viewer_of(request: Request, settings: SettingsDep) -> Viewer:
    viewer = current_viewer(request, settings)
    if viewer is None:
        if settings.auth_enabled:
            # htmx (a fragment's refresh) follows HX-Redirect; a page, the Location of the 303.
            login = {"Location": "/ui/login", "HX-Redirect": "/ui/login"}
            raise HTTPException(401 if request.headers.get("hx-request") else 303, "log in first", headers=login)
        viewer = anonymous_viewer()
        request.state.new_session = True
    return viewer


ViewerDep = Annotated[Viewer, Depends(viewer_of)]
BatchesDep = Annotated[BatchStore, Depends(get_batches)]


def not_found(request: Request, viewer: Viewer, what: str) -> HTMLResponse:
    return render(request, viewer, "error.html", status=404, title="Not found", message=f"No such {what}.")


def tenant_only(request: Request, viewer: Viewer) -> HTMLResponse | None:
    if viewer.is_ops:
        message = "An operations key sees the fleet's figures; log in with a tenant's key to see its runs."
        return render(request, viewer, "error.html", status=403, title="A tenant's page", message=message)
    return None


async def checked_post(request: Request, settings: SettingsDep) -> Viewer:
    """The viewer of a state-changing request, after its CSRF token and origin are checked."""
    viewer = current_viewer(request, settings)
    form = await request.form()
    token = form.get("csrf")
    if viewer is None or not csrf_ok(request, viewer, token if isinstance(token, str) else None):
        raise HTTPException(403, "refused: this request did not come from the dashboard's own page (CSRF)")
    return viewer


PostViewerDep = Annotated[Viewer, Depends(checked_post)]


def back_to(path: str, message: str | None = None) -> RedirectResponse:
    target = path + ("?" + urlencode({"message": message}) if message else "")
    return RedirectResponse(target, status_code=303)


# --- login --------------------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, settings: SettingsDep, error: str | None = None) -> HTMLResponse:
    return render(request, None, "login.html", error=error, auth=settings.auth_enabled)


@router.post("/login")
async def login(request: Request, settings: SettingsDep, key: Annotated[str, Form(max_length=512)] = "") -> Response:
    if not same_origin(request):
        raise HTTPException(403, "refused: the login form was not sent from this site")
    viewer = viewer_for_key(settings, key.strip()) if settings.auth_enabled else anonymous_viewer()
    if viewer is None:
        return RedirectResponse("/ui/login?error=1", status_code=303)
    response = RedirectResponse("/ui", status_code=303)
    set_session(response, request, settings, viewer)
    return response


@router.post("/logout")
async def logout(viewer: PostViewerDep) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    end_session(response)
    return response


# --- pages --------------------------------------------------------------------------------------


@router.get("")
async def overview_page(request: Request, viewer: ViewerDep, redis: RedisDep) -> HTMLResponse:
    shown = await figures.overview(redis, viewer.tenant, viewer.fleet, viewer.is_ops)
    return render(request, viewer, "overview.html", figures=shown)


def _run_filters(status: str | None, flow: str | None, story: str | None, batch: str | None) -> dict[str, str]:
    chosen = {"status": status, "flow": flow, "story": story, "batch": batch}
    return {name: value for name, value in chosen.items() if value}


async def _runs(store: StoreDep, tenant: str, filters: dict[str, str]) -> list[dict[str, Any]]:
    status = filters.get("status") if filters.get("status") in STATUSES else None
    story = filters.get("story")
    batch = filters.get("batch")
    if (story and not _is_id(story)) or (batch and not JOB_ID.match(batch)):
        return []
    runs, _ = await store.list_page(
        tenant, story_id=story, status=status, limit=100, cursor=None, batch_id=batch, flow=filters.get("flow")
    )
    return runs


def _is_id(value: str) -> bool:
    return ID.match(value) is not None


FilterQuery = Annotated[str | None, Query(max_length=128)]


@router.get("/runs")
async def runs_page(
    request: Request, viewer: ViewerDep, store: StoreDep, catalog: CatalogDep, status: FilterQuery = None,
    flow: FilterQuery = None, story: FilterQuery = None, batch: FilterQuery = None,
) -> HTMLResponse:  # fmt: skip
    if (refused := tenant_only(request, viewer)) is not None:
        return refused
    filters = _run_filters(status, flow, story, batch)
    runs = await _runs(store, viewer.tenant, filters)
    return render(
        request, viewer, "runs.html", runs=runs, filters=filters, statuses=STATUSES, flows=sorted(catalog.flows),
        query=urlencode(filters),
    )  # fmt: skip


@router.get("/runs/rows")
async def runs_rows(
    request: Request, viewer: ViewerDep, store: StoreDep, status: FilterQuery = None, flow: FilterQuery = None,
    story: FilterQuery = None, batch: FilterQuery = None,
) -> HTMLResponse:  # fmt: skip
    runs = [] if viewer.is_ops else await _runs(store, viewer.tenant, _run_filters(status, flow, story, batch))
    return render(request, viewer, "_runs_rows.html", runs=runs)


async def _run_view(store: StoreDep, catalog: CatalogDep, tenant: str, job_id: str) -> dict[str, Any] | None:
    record = await store.get(tenant, job_id) if JOB_ID.match(job_id) else None
    if record is None:
        return None
    spec = catalog.flows.get(record["flow"])
    return {
        "run": record, "steps": [_step_view(step) for step in record["steps"]],
        "nodes": list(spec.graph.nodes) if spec else [], "finished": record["status"] in FINISHED,
        "outputs": record["outputs"], "unfinished": record["status"] in UNFINISHED,
    }  # fmt: skip


def _step_view(step: dict[str, Any]) -> dict[str, Any]:
    seconds = None
    if step.get("started_at") and step.get("finished_at"):
        started = datetime.fromisoformat(step["started_at"].replace("Z", "+00:00"))
        finished = datetime.fromisoformat(step["finished_at"].replace("Z", "+00:00"))
        seconds = (finished - started).total_seconds()
    usage = step.get("usage") or {}
    tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0) if usage else None
    return {**step, "seconds": seconds, "tokens": tokens}


@router.get("/runs/{job_id}")
async def run_page(
    request: Request, job_id: str, viewer: ViewerDep, store: StoreDep, catalog: CatalogDep, message: FilterQuery = None
) -> HTMLResponse:
    if (refused := tenant_only(request, viewer)) is not None:
        return refused
    view = await _run_view(store, catalog, viewer.tenant, job_id)
    if view is None:
        return not_found(request, viewer, "run")
    return render(request, viewer, "run.html", message=message, **view)


@router.get("/runs/{job_id}/detail")
async def run_detail(
    request: Request, job_id: str, viewer: ViewerDep, store: StoreDep, catalog: CatalogDep, seen: FilterQuery = None
) -> Response:
    """The run's live part; when its status is not the one the page shows, the whole page is reloaded
    (the actions it offers change with the status)."""
    view = None if viewer.is_ops else await _run_view(store, catalog, viewer.tenant, job_id)
    if view is None:
        return not_found(request, viewer, "run")
    if seen is not None and seen != view["run"]["status"]:
        return secure_headers(Response(status_code=200, headers={"HX-Refresh": "true"}))
    return render(request, viewer, "_run_detail.html", **view)


@router.get("/runs/{job_id}/events")
async def run_events(
    request: Request, job_id: str, viewer: ViewerDep, store: StoreDep, redis: RedisDep,
    last_event_id: Annotated[str | None, Header(max_length=41, pattern=STREAM_ID)] = None,
) -> Response:  # fmt: skip
    """The run's event stream for the page (the session's tenant, no API key in the browser); a
    reconnecting EventSource goes on after the last event it had."""
    if viewer.is_ops:
        raise HTTPException(404, "run not found")
    return await api_run_events(request, job_id, viewer.tenant, store, redis, last_event_id)


@router.post("/runs/{job_id}/cancel")
async def cancel(job_id: str, viewer: PostViewerDep, store: StoreDep) -> Response:
    return await _act(cancel_run(job_id, viewer.tenant, store), _run_page(job_id), "Cancelled.")


@router.post("/runs/{job_id}/retry")
async def retry(
    job_id: str, viewer: PostViewerDep, store: StoreDep, catalog: CatalogDep,
    from_node: Annotated[str, Form(alias="from", max_length=64)] = "",
) -> Response:  # fmt: skip
    body = RetryRequest(**{"from": from_node or None})
    return await _act(retry_run(job_id, viewer.tenant, store, catalog, body), _run_page(job_id), "Queued again.")


@router.post("/runs/{job_id}/input")
async def answer(
    job_id: str, viewer: PostViewerDep, store: StoreDep, catalog: CatalogDep, settings: SettingsDep,
    action: Annotated[str, Form(max_length=64)], text: Annotated[str, Form(max_length=65536)] = "",
) -> Response:  # fmt: skip
    body = InputRequest(action=action, text=text or None)
    answering = answer_input(job_id, body, viewer.tenant, store, catalog, settings)
    return await _act(answering, _run_page(job_id), "Answered.")


def _run_page(job_id: str) -> str:
    return f"/ui/runs/{job_id}" if JOB_ID.match(job_id) else "/ui/runs"


async def _act(action: Any, page: str, done: str, page_if_refused: str | None = None) -> Response:
    """Run an API action for the dashboard: back to `page` saying it is done, or to `page_if_refused`
    (by default `page`) with the API's message."""
    try:
        await action
    except HTTPException as exc:
        return back_to(page_if_refused or page, _message(exc.detail))
    return back_to(page, done)


def _message(detail: Any) -> str:
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        return str(detail[0].get("msg", detail))
    return str(detail)


@router.get("/batches")
async def batches_page(request: Request, viewer: ViewerDep, batches: BatchesDep) -> HTMLResponse:
    if (refused := tenant_only(request, viewer)) is not None:
        return refused
    return render(request, viewer, "batches.html", batches=await batches.list_recent(viewer.tenant, 100))


@router.get("/batches/{batch_id}")
async def batch_page(
    request: Request, batch_id: str, viewer: ViewerDep, batches: BatchesDep, message: FilterQuery = None
) -> HTMLResponse:
    if (refused := tenant_only(request, viewer)) is not None:
        return refused
    batch = await batches.get(viewer.tenant, batch_id) if JOB_ID.match(batch_id) else None
    if batch is None:
        return not_found(request, viewer, "batch")
    return render(request, viewer, "batch.html", batch=batch, message=message)


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, viewer: PostViewerDep, store: StoreDep, batches: BatchesDep) -> Response:
    cancelling = batch_routes.cancel_batch(batch_id, viewer.tenant, store, batches)
    return await _act(cancelling, f"/ui/batches/{batch_id}", "Unfinished runs cancelled.", "/ui/batches")


@router.post("/batches/{batch_id}/retry")
async def retry_batch(
    batch_id: str, viewer: PostViewerDep, store: StoreDep, batches: BatchesDep, catalog: CatalogDep
) -> Response:
    retrying = batch_routes.retry_batch(batch_id, viewer.tenant, store, batches, catalog)
    return await _act(retrying, f"/ui/batches/{batch_id}", "Failed runs queued again.", "/ui/batches")


@router.get("/stories/{story_id}")
async def story_page(
    request: Request, story_id: str, viewer: ViewerDep, redis: RedisDep, message: FilterQuery = None
) -> HTMLResponse:
    if (refused := tenant_only(request, viewer)) is not None:
        return refused
    if not _is_id(story_id):
        return not_found(request, viewer, "story")
    memory = await memory_store.read_memory(redis, viewer.tenant, story_id)
    shown = orjson.dumps(memory, option=orjson.OPT_INDENT_2).decode() if memory else None
    docs = await memory_store.list_documents(redis, viewer.tenant)
    return render(request, viewer, "story.html", story_id=story_id, memory=shown, docs=docs, message=message)


@router.post("/stories/{story_id}/docs")
async def save_document(
    story_id: str, viewer: PostViewerDep, redis: RedisDep, settings: SettingsDep,
    doc_id: Annotated[str, Form(max_length=128)], content: Annotated[str, Form()],
) -> Response:  # fmt: skip
    page = f"/ui/stories/{story_id}" if _is_id(story_id) else "/ui/runs"
    if not _is_id(doc_id):
        return back_to(page, "A document id is letters, digits, '.', '_' or '-' (at most 128).")
    if len(content.encode()) > settings.max_doc_bytes:
        return back_to(page, f"The document is over STORYFLOW_MAX_DOC_BYTES={settings.max_doc_bytes}.")
    await memory_store.put_document(redis, viewer.tenant, doc_id, content)
    return back_to(page, f"Saved {doc_id}.")


@router.get("/workers")
async def workers_page(request: Request, viewer: ViewerDep, redis: RedisDep) -> HTMLResponse:
    if not viewer.fleet:
        message = "The workers are fleet-wide figures: they need an operations key (STORYFLOW_OPS_KEYS)."
        return render(request, viewer, "error.html", status=403, title="Workers", message=message)
    return render(request, viewer, "workers.html", workers=await live_workers(redis))
