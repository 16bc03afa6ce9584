"""/swagger works offline: every asset it loads comes from this server."""

from __future__ import annotations

import re

import httpx


async def test_swagger_loads_every_asset_from_this_server(client: httpx.AsyncClient) -> None:
    page = await client.get("/swagger")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url:\s*'([^']+)'""", page.text)
    urls = [a or b for a, b in urls]
    assert urls and not [u for u in urls if "//" in u], urls  # nothing from another host
    for url in urls:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.content
