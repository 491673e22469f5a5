"""The supervisor console: a static page at ``/`` with its script and style under ``/console/``.

The page holds no data: everything it shows comes from the API and the live WebSocket with the
supervisor's own bearer token, so the files themselves are public. A strict
Content-Security-Policy allows only this origin's script and style (no inline code) and
WebSocket connections for the live board.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

PACKAGE = "ivr.console"
PAGE = "index.html"
# The only files served from the package: anything else is 404, whatever the name looks like.
ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "monitor-worklet.js": "text/javascript; charset=utf-8",
}
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self' ws: wss:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
HEADERS = {
    # Always revalidate, so a new release's page and script are never mixed with old ones.
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _read(name: str) -> bytes:
    return resources.files(PACKAGE).joinpath(name).read_bytes()


def console_router() -> APIRouter:
    """``GET /`` (the console page) and ``GET /console/{name}`` (its script and style)."""
    # Read once: the files ship with the package and are small; a missing one fails at start-up.
    files = {name: _read(name) for name in (PAGE, *ASSETS)}
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def page() -> Response:
        """The supervisor console."""
        return Response(files[PAGE], media_type="text/html; charset=utf-8", headers=HEADERS)

    @router.get("/console/{name}")
    async def asset(name: str) -> Response:
        """The console's script or style sheet."""
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(404, "no such console file")
        return Response(files[name], media_type=media_type, headers=HEADERS)

    return router
