"""The dashboard's page at /ui (static files of this package) and / sending browsers there.

The page holds no secret and no data: it loads what it shows from /events, /history and
/model with the token the user types in (docs/dashboard.md), so it is served to anyone.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

__all__ = ["UI_DIR", "prefers_html", "router"]

router = APIRouter(include_in_schema=False)

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
ASSETS = {  # everything the page loads: nothing from elsewhere
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "charts.js": "text/javascript",
    "format.js": "text/javascript",
}
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}


@router.api_route("/", methods=["GET", "HEAD"])
async def root(request: Request) -> Response:
    """Send a browser (Accept prefers text/html) to /ui; answer others 404 as before."""
    if prefers_html(request.headers.get("accept", "")):
        return RedirectResponse("/ui", status_code=303)
    raise HTTPException(status_code=404, detail="Not Found")


@router.get("/ui")
async def page() -> FileResponse:
    """Serve the dashboard's page."""
    return FileResponse(UI_DIR / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/ui/{name}")
async def asset(name: str) -> FileResponse:
    """Serve one of the page's scripts or its stylesheet."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail="Not Found")
    return FileResponse(UI_DIR / name, media_type=media_type, headers=HEADERS)


def prefers_html(accept: str) -> bool:
    """Whether an Accept header names text/html with a quality no other type beats."""
    html_q, other_q = 0.0, 0.0
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media.lower() == "text/html":
            html_q = max(html_q, quality)
        elif media and media != "*/*":
            other_q = max(other_q, quality)
    return html_q > 0 and html_q >= other_q
