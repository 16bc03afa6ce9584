"""Documents a flow needs, per tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response
from fastapi.responses import JSONResponse

from api.deps import RedisDep, SettingsDep, TenantDep
from api.errors import error_responses, validation_error
from api.routing import StrictJSONRoute
from api.schemas import ID_PATTERN, DocumentIn, DocumentOut, DocumentSummary
from memory import store

router = APIRouter(tags=["documents"], route_class=StrictJSONRoute)
DocId = Annotated[str, Path(pattern=ID_PATTERN)]


@router.put(
    "/docs/{doc_id}",
    response_model=DocumentOut,
    responses={201: {"model": DocumentOut, "description": "created"}, **error_responses(400, 401, 413, 422, 503)},
)
async def put_document(
    doc_id: DocId, body: DocumentIn, tenant: TenantDep, redis: RedisDep, settings: SettingsDep
) -> JSONResponse:
    size = len(body.content.encode())
    if size > settings.max_doc_bytes:
        message = f"content is {size} bytes; the limit is STORYFLOW_MAX_DOC_BYTES={settings.max_doc_bytes}"
        raise HTTPException(422, validation_error("content", message))
    doc, created = await store.put_document(redis, tenant, doc_id, body.content)
    return JSONResponse(
        DocumentOut(doc_id=doc.doc_id, content=doc.content, updated_at=doc.updated_at).model_dump(),
        status_code=201 if created else 200,
    )


@router.get("/docs/{doc_id}", response_model=DocumentOut, responses=error_responses(401, 404, 422, 503))
async def get_document(doc_id: DocId, tenant: TenantDep, redis: RedisDep) -> DocumentOut:
    doc = await store.get_document(redis, tenant, doc_id)
    if doc is None:
        raise HTTPException(404, "document not found")
    return DocumentOut(doc_id=doc.doc_id, content=doc.content, updated_at=doc.updated_at)


@router.get("/docs", response_model=list[DocumentSummary], responses=error_responses(401, 503))
async def list_documents(tenant: TenantDep, redis: RedisDep) -> list[DocumentSummary]:
    return [
        DocumentSummary(doc_id=doc.doc_id, updated_at=doc.updated_at, bytes=len(doc.content.encode()))
        for doc in await store.list_documents(redis, tenant)
    ]


@router.delete("/docs/{doc_id}", status_code=204, responses=error_responses(401, 404, 422, 503))
async def delete_document(doc_id: DocId, tenant: TenantDep, redis: RedisDep) -> Response:
    if not await store.delete_document(redis, tenant, doc_id):
        raise HTTPException(404, "document not found")
    return Response(status_code=204)
