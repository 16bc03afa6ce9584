"""Annotated dependencies: settings, clients from app.state, and the caller's tenant."""

from __future__ import annotations

import hmac
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from agents.registry import Catalog
from infra.settings import DEFAULT_TENANT, Settings
from runs.store import RunStore


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
        raise _unauthorized()
    return tenant


async def require_ops_key(
    settings: Annotated[Settings, Depends(get_settings)], bearer: BearerDep, x_api_key: ApiKeyDep
) -> None:
    """Operations routes (/readyz, /metrics, /workers) show the whole fleet: they take an ops key, not a tenant's.

    Open when auth is off or STORYFLOW_PUBLIC_OPS is set; no key or an unknown one: 401; a tenant's key: 403.
    """
    if settings.public_ops or not settings.auth_enabled:
        return
    presented = _presented_key(bearer, x_api_key)
    if presented is not None and _matches_any(presented, settings.ops_key_list):
        return
    if presented is not None and _matches_any(presented, list(settings.keys_to_tenants)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="operations routes take a key from STORYFLOW_OPS_KEYS")
    raise _unauthorized()


def _matches_any(presented: str, candidates: list[str]) -> bool:
    found = False
    for candidate in candidates:  # every candidate compared: the time taken says nothing of which matched
        found |= hmac.compare_digest(candidate.encode(), presented.encode())
    return found


def _unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid API key: send Authorization: Bearer <key> or X-API-Key",
        headers={"WWW-Authenticate": "Bearer"},
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[ArqRedis, Depends(get_redis)]
StoreDep = Annotated[RunStore, Depends(get_store)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
TenantDep = Annotated[str, Depends(get_tenant)]
OpsAccessDep = Annotated[None, Depends(require_ops_key)]
