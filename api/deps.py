"""Annotated dependencies: settings, clients from app.state, and the caller's tenant."""

from __future__ import annotations

import hmac
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from agents.registry import Catalog
from infra.settings import DEFAULT_TENANT, Settings
from worker.runstore import RunStore


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_redis(request: Request) -> ArqRedis:
    redis: ArqRedis = request.app.state.redis
    return redis


async def get_store(request: Request) -> RunStore:
    store: RunStore = request.app.state.store
    return store


async def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


# Declared as security schemes so the OpenAPI (and /swagger's Authorize button) says how to authenticate.
BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <key>")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
ApiKeyDep = Annotated[str | None, Security(API_KEY)]


def _presented_key(bearer: HTTPAuthorizationCredentials | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key
    if bearer is not None and bearer.credentials.strip():
        return bearer.credentials.strip()
    return None


async def get_tenant(
    settings: Annotated[Settings, Depends(get_settings)], bearer: BearerDep, x_api_key: ApiKeyDep
) -> str:
    if not settings.auth_enabled:
        return DEFAULT_TENANT
    presented = _presented_key(bearer, x_api_key)
    tenant = None
    if presented is not None:
        for key, owner in settings.keys_to_tenants.items():
            if hmac.compare_digest(key.encode(), presented.encode()):
                tenant = owner
    if tenant is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid API key: send Authorization: Bearer <key> or X-API-Key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant


async def get_ops_tenant(
    settings: Annotated[Settings, Depends(get_settings)], bearer: BearerDep, x_api_key: ApiKeyDep
) -> str | None:
    """Operations routes (/readyz, /metrics): protected like the rest unless STORYFLOW_PUBLIC_OPS."""
    if settings.public_ops:
        return None
    return await get_tenant(settings, bearer, x_api_key)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[ArqRedis, Depends(get_redis)]
StoreDep = Annotated[RunStore, Depends(get_store)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
TenantDep = Annotated[str, Depends(get_tenant)]
OpsAccessDep = Annotated[str | None, Depends(get_ops_tenant)]
