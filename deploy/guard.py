"""What every request passes before a handler runs: API-key check (401) and
body-size limit (413), as one small ASGI middleware.

The middleware sits on the module-level FastAPI app of an ingress; each Serve
replica configures it in ``__init__`` through ``app.state.guard`` (Starlette
puts the app into ``scope["app"]``), so the key is read inside the replica
from its environment or a file and never travels through the Serve config.

It also maps the bare route prefix (``POST /v1/reward`` on an app mounted at
``/v1/reward``) to ``/`` instead of Starlette's 307 redirect, which POST
clients do not follow.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from starlette.exceptions import HTTPException as StarletteHTTPException

from hbat.deploy.errors import APIError

#: paths (after the route prefix) that never need a key
OPEN_PATHS = frozenset({"/health"})


def load_api_keys(api_key_env: str | None = None, api_key_file: str | None = None) -> list[str]:
    """Keys from an environment variable and/or a file (one key per line, ``#`` comments).

    Naming a source that is absent or empty is an error: a server that was
    asked to require a key must not start without one.
    """
    keys: list[str] = []
    if api_key_env:
        value = os.environ.get(api_key_env, "").strip()
        if not value:
            raise RuntimeError(
                f"API key environment variable '{api_key_env}' is not set (or empty) in the Serve replica; "
                "set it where Ray starts (or through runtime_env env_vars) or use api_key_file"
            )
        keys.append(value)
    if api_key_file:
        path = Path(api_key_file).expanduser()
        if not path.is_file():
            raise RuntimeError(f"API key file '{path}' does not exist on this node")
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        file_keys = [ln for ln in lines if ln and not ln.startswith("#")]
        if not file_keys:
            raise RuntimeError(f"API key file '{path}' holds no key")
        keys.extend(file_keys)
    return keys


@dataclass
class Guard:
    api_keys: list[str] = field(default_factory=list)
    max_body_bytes: int = 1 << 20

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        if not self.api_keys:
            return True
        given = ""
        auth = headers.get(b"authorization", b"").decode("latin-1").strip()
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            given = headers.get(b"x-api-key", b"").decode("latin-1").strip()
        if not given:
            return False
        return any(hmac.compare_digest(given.encode(), k.encode()) for k in self.api_keys)


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a body without (or with a false)
    Content-Length grows past the limit; FastAPI passes HTTPExceptions
    through to the app's handlers, which answer 413."""

    def __init__(self, size: int, limit: int):
        super().__init__(413, f"Request body is over this server's limit of {limit} bytes (read {size}).")


class GuardMiddleware:
    """Pure ASGI middleware (no buffering, streaming responses pass untouched)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "") or ""
        path = scope.get("path", "")
        if root and path == root:
            scope = dict(scope, path=root + "/", raw_path=(root + "/").encode())
        rel = scope["path"][len(root):] if root and scope["path"].startswith(root) else scope["path"]
        app_obj = scope.get("app")
        guard: Guard | None = getattr(getattr(app_obj, "state", None), "guard", None)
        if guard is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if rel not in OPEN_PATHS and not guard.authorized(headers):
            msg = (
                "Missing API key: send it as 'Authorization: Bearer <key>'."
                if b"authorization" not in headers and b"x-api-key" not in headers
                else "Incorrect API key provided."
            )
            await APIError(401, msg, code="invalid_api_key").response()(scope, receive, send)
            return
        limit = guard.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await APIError(400, "Invalid Content-Length header").response()(scope, receive, send)
                return
            if declared > limit:
                await _too_large(declared, limit)(scope, receive, send)
                return
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(seen, limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(seen, limit)(scope, receive, send)


def _too_large(size: int, limit: int):
    return APIError(
        413,
        f"Request body is {size} bytes, over this server's limit of {limit} bytes.",
        code="request_too_large",
    ).response()
