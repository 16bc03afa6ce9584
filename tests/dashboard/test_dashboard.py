"""The dashboard in a real headless Chromium (the distribution's package, driven by Playwright), against
a real API process and a real worker process on the test Redis."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, async_playwright, expect
from redis.asyncio import Redis

from infra.embedded_redis import free_port
from tests.conftest import ROOT, Processes, wait_for, wait_http_ok

pytestmark = [pytest.mark.timeout(120)]

TENANT_KEY, OTHER_KEY, OPS_KEY = "acme-key-123", "globex-key-456", "ops-key-789"
AUTH = {
    "STORYFLOW_API_KEYS": f"acme:{TENANT_KEY},globex:{OTHER_KEY}", "STORYFLOW_OPS_KEYS": OPS_KEY,
}  # fmt: skip
XSS = "<img src=x onerror=alert(1)>"
EXPECT_TIMEOUT_MS = 20_000


def chromium_path() -> str:
    found = os.environ.get("STORYFLOW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("the dashboard tests need Chromium: apt-get install -y chromium (or set STORYFLOW_CHROMIUM)")
    return found


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        yield launched
        await launched.close()


@dataclass
class Site:
    base: str
    http: httpx.AsyncClient
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    async def page(self, browser: Browser) -> Page:
        context = await browser.new_context(base_url=self.base)
        page = await context.new_page()
        page.set_default_timeout(EXPECT_TIMEOUT_MS)

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.errors.append(message.text)

        async def dialog(opened: Dialog) -> None:
            self.dialogs.append(opened.message)
            await opened.dismiss()

        page.on("console", console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", dialog)
        return page

    async def submit(self, key: str | None = None, **body: Any) -> str:
        run = {"input": "Users want PDF export.", "story_id": "story-1", **body}
        response = await self.http.post("/run", json=run, headers=_auth(key))
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job_id"]
        return job_id

    async def status(self, job_id: str, key: str | None = None) -> str:
        status: str = (await self.http.get(f"/run/{job_id}", headers=_auth(key))).json()["status"]
        return status

    async def until(self, job_id: str, *statuses: str, key: str | None = None) -> None:
        async def reached() -> bool:
            return await self.status(job_id, key) in statuses

        await wait_for(reached, timeout=30)


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def start_site(processes: Processes, **env: str) -> AsyncIterator[Site]:
    port = free_port()
    processes.api(port, **env)
    processes.worker(**env)
    base = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{base}/healthz")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        yield Site(base, http)


@pytest.fixture
async def site(processes: Processes, redis: Redis) -> AsyncIterator[Site]:
    """Auth off, the echo provider streaming each answer over a second."""
    async for started in start_site(processes, STORYFLOW_ECHO_DELAY="1"):
        yield started


@pytest.fixture
async def auth_site(processes: Processes, redis: Redis) -> AsyncIterator[Site]:
    async for started in start_site(processes, **AUTH):
        yield started


async def put_docs(site: Site, key: str | None = None) -> None:
    for doc_id in ("prd", "architecture"):
        response = await site.http.put(f"/docs/{doc_id}", json={"content": f"the {doc_id}"}, headers=_auth(key))
        assert response.status_code in (200, 201)


async def login(page: Page, key: str) -> None:
    await page.goto("/ui/login")
    await page.fill("#key", key)
    await page.click("button[type=submit]")


async def test_every_page_loads_with_no_console_error(site: Site, browser: Browser) -> None:
    job_id = await site.submit()
    await site.until(job_id, "complete")
    batch = (await site.http.post("/batches", json={"runs": [{"input": "x", "story_id": "story-2"}]})).json()
    page = await site.page(browser)
    for path in (
        "/ui", "/ui/runs", f"/ui/runs/{job_id}", "/ui/batches", f"/ui/batches/{batch['batch_id']}",
        "/ui/stories/story-1", "/ui/workers", "/ui/runs?status=complete&flow=default&story=story-1",
    ):  # fmt: skip
        response = await page.goto(path)
        assert response is not None and response.status == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        await page.wait_for_load_state("networkidle")
    assert site.errors == []
    missing = await page.goto("/ui/runs/" + "0" * 32)
    assert missing is not None and missing.status == 404


async def test_a_run_submitted_over_the_api_appears_and_turns_complete_without_a_reload(
    site: Site, browser: Browser
) -> None:
    page = await site.page(browser)
    await page.goto("/ui/runs")
    job_id = await site.submit(story_id="live-1")
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    await expect(row).to_be_visible()
    await expect(row.locator(".status")).to_have_text("complete", timeout=30_000)
    assert site.errors == []


async def test_the_run_page_shows_tokens_as_they_arrive(site: Site, browser: Browser) -> None:
    job_id = await site.submit(story_id="tokens-1", input="one two three four five six seven eight")
    page = await site.page(browser)
    await page.goto(f"/ui/runs/{job_id}")
    tokens = page.locator("#tokens")
    await expect(tokens).to_contain_text("[analyst]")
    partial = await tokens.text_content() or ""
    assert await site.status(job_id) != "complete" or "[summarizer]" not in partial  # seen while streaming
    await expect(tokens).to_contain_text("[summarizer] [summarizer] [analyst] one two", timeout=30_000)
    await expect(page.locator("#run-status")).to_have_text("complete", timeout=30_000)
    assert site.errors == []


async def test_cancel_retry_and_answer_from_the_buttons(site: Site, browser: Browser) -> None:
    page = await site.page(browser)
    slow = await site.submit(flow="slow", input="sleep=30", story_id="slow-1")
    await site.until(slow, "in_progress")
    await page.goto(f"/ui/runs/{slow}")
    await page.click("#cancel")
    await expect(page.locator("#run-status")).to_have_text("cancelled")
    await expect(page.locator(".message")).to_have_text("Cancelled.")
    await page.click("#retry")
    await expect(page.locator(".message")).to_have_text("Queued again.")
    await site.until(slow, "queued", "in_progress")
    await page.click("#cancel")
    await site.until(slow, "cancelled")

    await put_docs(site)
    waiting = await site.submit(flow="story_approval", story_id="approve-1")
    await site.until(waiting, "awaiting_input")
    await page.goto(f"/ui/runs/{waiting}")
    await page.select_option("select[name=action]", "approve")
    await page.fill("textarea[name=text]", "Approved by the dashboard.")
    await page.click("#answer")
    await expect(page.locator("#run-status")).to_have_text("complete", timeout=30_000)
    await expect(page.locator("#result")).to_contain_text("Approved by the dashboard.")
    assert site.errors == []


async def test_a_bad_document_from_the_story_page_is_refused_with_a_message(site: Site, browser: Browser) -> None:
    page = await site.page(browser)
    await page.goto("/ui/stories/story-1")
    await page.fill("input[name=doc_id]", "bad:id")
    await page.fill("form.doc >> nth=-1 >> textarea", "content")
    await page.click("text=Add")
    await expect(page.locator(".message")).to_contain_text("A document id is")
    await page.fill("input[name=doc_id]", "prd")
    await page.fill("form.doc >> nth=-1 >> textarea", "x" * 1_048_577)  # over STORYFLOW_MAX_BODY_BYTES
    async with page.expect_response("**/ui/stories/story-1/docs") as sent:
        await page.click("text=Add")
    assert (await sent.value).status == 413
    assert (await site.http.get("/docs")).json() == []
    site.errors.clear()  # the browser logs the 413 it was answered
    await page.goto("/ui/stories/story-1")
    await page.fill("input[name=doc_id]", "prd")
    await page.fill("form.doc >> nth=-1 >> textarea", "The PRD.")
    await page.click("text=Add")
    await expect(page.locator(".message")).to_have_text("Saved prd.")
    assert (await site.http.get("/docs/prd")).json()["content"] == "The PRD."
    assert site.errors == []


async def test_markup_in_an_input_is_shown_as_text(site: Site, browser: Browser) -> None:
    job_id = await site.submit(story_id="xss-1", input=XSS)
    await site.until(job_id, "complete")
    page = await site.page(browser)
    await page.goto(f"/ui/runs/{job_id}")
    await expect(page.locator("#result")).to_contain_text(XSS)
    await expect(page.locator("#tokens")).to_contain_text(XSS)
    assert await page.locator("main img").count() == 0
    assert site.dialogs == [] and site.errors == []


class _AttackerPage(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        page = (
            f'<form id="f" method="post" action="{self.target}"><input name="csrf" value="guess"></form>'
            '<script>document.getElementById("f").submit()</script>'
        )
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(page.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def attacker() -> Iterator[tuple[str, type[_AttackerPage]]]:
    handler = type("Handler", (_AttackerPage,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}/", handler
    server.shutdown()
    server.server_close()


async def test_a_cross_site_post_is_refused(
    auth_site: Site, browser: Browser, attacker: tuple[str, type[_AttackerPage]]
) -> None:
    site = auth_site
    job_id = await site.submit(TENANT_KEY, flow="slow", input="sleep=30", story_id="csrf-1")
    await site.until(job_id, "in_progress", key=TENANT_KEY)
    page = await site.page(browser)
    await login(page, TENANT_KEY)
    await expect(page.locator("h1")).to_have_text("Overview")
    # Another site's page posts to the dashboard in the same browser (logged in): refused.
    url, handler = attacker
    handler.target = f"{site.base}/ui/runs/{job_id}/cancel"
    await page.goto(url)
    await page.wait_for_load_state("networkidle")
    assert await site.status(job_id, TENANT_KEY) == "in_progress"
    # The same POST with the session's cookie but without the page's token: 403.
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    async with httpx.AsyncClient(base_url=site.base, cookies=cookies) as logged_in:
        forged = await logged_in.post(f"/ui/runs/{job_id}/cancel", data={"csrf": "guess"})
        assert forged.status_code == 403
        no_token = await logged_in.post(f"/ui/runs/{job_id}/cancel")
        assert no_token.status_code == 403
    assert await site.status(job_id, TENANT_KEY) == "in_progress"
    # From the dashboard's own page it works.
    await page.goto(f"/ui/runs/{job_id}")
    await page.click("#cancel")
    await expect(page.locator("#run-status")).to_have_text("cancelled")


async def test_login_logout_and_what_each_key_sees(auth_site: Site, browser: Browser) -> None:
    site = auth_site
    page = await site.page(browser)
    await page.goto("/ui/runs")
    assert page.url.endswith("/ui/login")
    await login(page, "not-a-key-at-all")
    await expect(page.locator(".message.error")).to_be_visible()
    cookie = next((c for c in await page.context.cookies() if c["name"] == "storyflow_session"), None)
    assert cookie is None

    await login(page, TENANT_KEY)
    cookie = next(c for c in await page.context.cookies() if c["name"] == "storyflow_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    await expect(page.locator("#active-runs")).to_be_visible()
    assert await page.locator("#queue-depth").count() == 0 and await page.locator("#workers").count() == 0
    assert await page.locator("a[href='/ui/workers']").count() == 0
    workers = await page.goto("/ui/workers")
    assert workers is not None and workers.status == 403
    other = await site.submit(OTHER_KEY, story_id="theirs")
    theirs = await page.goto(f"/ui/runs/{other}")
    assert theirs is not None and theirs.status == 404
    await page.goto("/ui")
    await page.click("text=Log out")
    await expect(page.locator("h1")).to_have_text("Log in")
    await page.goto("/ui/runs")
    assert page.url.endswith("/ui/login")

    await login(page, OPS_KEY)
    await expect(page.locator("#queue-depth")).to_be_visible()
    await expect(page.locator("#workers")).to_have_text("1")
    await page.goto("/ui/workers")
    await expect(page.locator("tbody tr")).to_have_count(1)
    # The 403 and 404 pages visited on purpose; nothing else.
    assert [e for e in site.errors if "status of 403" not in e and "status of 404" not in e] == []


@pytest.mark.skipif(not os.environ.get("STORYFLOW_SCREENSHOTS"), reason="writes docs/*.png when asked")
async def test_screenshots_for_the_readme(site: Site, browser: Browser) -> None:
    await put_docs(site)
    for index in range(6):
        await site.submit(story_id=f"shot-{index}", input=f"Story {index}: let shoppers pay with a saved card.")
    job_id = await site.submit(flow="story", story_id="checkout", input="Let shoppers pay with a saved card.")
    await site.until(job_id, "complete")
    page = await site.page(browser)
    await page.set_viewport_size({"width": 1200, "height": 800})
    await page.goto("/ui")
    await page.screenshot(path=str(Path(ROOT) / "docs" / "dashboard-overview.png"), full_page=True)
    await page.goto(f"/ui/runs/{job_id}")
    await expect(page.locator("#tokens")).to_contain_text("[qa]")
    await page.screenshot(path=str(Path(ROOT) / "docs" / "dashboard-run.png"), full_page=True)
