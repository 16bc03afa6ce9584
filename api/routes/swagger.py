"""The interactive API docs at /swagger, with Swagger UI's assets served from the `swagger-ui-bundle` package.

FastAPI's default page loads them from a CDN, so it is blank offline or behind a strict egress policy.
(/docs is the contract's documents route, hence /swagger.)
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/swagger/assets"
router = APIRouter(include_in_schema=False)


@router.get("/swagger", response_class=HTMLResponse)
async def swagger_page() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="storyflow: API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
    )


def mount_swagger(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-assets")
