"""The flows this service can run."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CatalogDep, TenantDep
from api.errors import error_responses
from api.schemas import FlowInfo, Graph

router = APIRouter(tags=["flows"])


@router.get("/flows", response_model=list[FlowInfo], responses=error_responses(401))
async def list_flows(catalog: CatalogDep, tenant: TenantDep) -> list[FlowInfo]:
    return [
        FlowInfo(
            name=spec.name,
            agents=list(spec.agents),
            requires_docs=list(spec.requires_docs),
            graph=Graph.model_validate(spec.graph.as_json()),
        )
        for spec in catalog.flows.values()
    ]
