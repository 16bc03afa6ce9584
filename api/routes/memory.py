"""Story memory, for debugging: read or wipe what the agents remember about a story."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response

from api.deps import RedisDep, TenantDep
from api.errors import error_responses
from api.schemas import ID_PATTERN, Memory
from memory import store

router = APIRouter(tags=["memory"])
StoryId = Annotated[str, Path(pattern=ID_PATTERN)]


@router.get("/memory/{story_id}", response_model=Memory, responses=error_responses(401, 404, 422, 503))
async def get_memory(story_id: StoryId, tenant: TenantDep, redis: RedisDep) -> dict[str, Any]:
    memory = await store.read_memory(redis, tenant, story_id)
    if memory is None:
        raise HTTPException(404, "no memory for this story")
    return memory


@router.delete("/memory/{story_id}", status_code=204, responses=error_responses(401, 404, 422, 503))
async def delete_memory(story_id: StoryId, tenant: TenantDep, redis: RedisDep) -> Response:
    if not await store.delete_memory(redis, tenant, story_id):
        raise HTTPException(404, "no memory for this story")
    return Response(status_code=204)
