"""Who looks at the dashboard: a signed session cookie (itsdangerous), and CSRF checks on every POST.

The cookie holds the viewer's tenant, whether it sees fleet-wide figures, a fingerprint of the key it
logged in with (a key taken out of the configuration ends its sessions) and the session's CSRF token.
It is HttpOnly and SameSite=Strict (Secure over https). The signing secret is derived from the
configured keys, so every API process of a fleet agrees on it without a setting of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from infra.settings import DEFAULT_TENANT, Settings

COOKIE = "storyflow_session"
MAX_AGE_S = 12 * 3600
OPS = ""  # the tenant of a session opened with an operations key: it sees fleet figures, no tenant's runs


@dataclass(frozen=True)
class Viewer:
    tenant: str  # OPS for an operations key
    fleet: bool  # sees fleet-wide figures (queue depth, workers)
    csrf: str
    key: str = ""  # fingerprint of the key the session was opened with ("" with auth off)

    @property
    def is_ops(self) -> bool:
        return self.tenant == OPS


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    keys = settings.api_keys.get_secret_value() if settings.api_keys else ""
    ops = settings.ops_keys.get_secret_value() if settings.ops_keys else ""
    secret = hmac.new(b"storyflow-dashboard-session", f"{keys}|{ops}".encode(), "sha256")
    return URLSafeTimedSerializer(secret.hexdigest(), salt="storyflow-dashboard")


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def viewer_for_key(settings: Settings, presented: str) -> Viewer | None:
    """The viewer a key opens a session for, or None for a wrong key."""
    tenant = None
    for key, owner in settings.keys_to_tenants.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            tenant = owner
    for key in settings.ops_key_list:
        if hmac.compare_digest(key.encode(), presented.encode()):
            tenant = OPS
    if tenant is None:
        return None
    return Viewer(tenant, tenant == OPS or settings.public_ops, secrets.token_urlsafe(24), fingerprint(presented))


def current_viewer(request: Request, settings: Settings) -> Viewer | None:
    """The session's viewer; with auth off, everyone is tenant `default` (a session only carries CSRF)."""
    raw = request.cookies.get(COOKIE)
    found: Viewer | None = None
    if raw:
        try:
            found = Viewer(**_serializer(settings).loads(raw, max_age=MAX_AGE_S))
        except (BadSignature, TypeError):
            found = None
    if not settings.auth_enabled:
        return found if found is not None and found.tenant == DEFAULT_TENANT else None
    if found is None or not _key_still_valid(settings, found):
        return None
    return found


def anonymous_viewer() -> Viewer:
    """With auth off: the one tenant, with fleet figures (like the open operations routes)."""
    return Viewer(DEFAULT_TENANT, True, secrets.token_urlsafe(24))


def _key_still_valid(settings: Settings, viewer: Viewer) -> bool:
    if viewer.is_ops:
        return any(hmac.compare_digest(fingerprint(k), viewer.key) for k in settings.ops_key_list)
    return any(
        hmac.compare_digest(fingerprint(k), viewer.key) and owner == viewer.tenant
        for k, owner in settings.keys_to_tenants.items()
    )


def set_session(response: Response, request: Request, settings: Settings, viewer: Viewer) -> None:
    response.set_cookie(
        COOKIE, _serializer(settings).dumps(asdict(viewer)), max_age=MAX_AGE_S, httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/ui",
    )  # fmt: skip


def end_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (Sec-Fetch-Site, Origin)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        return urlsplit(origin).netloc == request.headers.get("host", "")
    return origin is None


def csrf_ok(request: Request, viewer: Viewer, submitted: str | None) -> bool:
    token = submitted or request.headers.get("x-csrf-token") or ""
    return same_origin(request) and hmac.compare_digest(token.encode(), viewer.csrf.encode())
