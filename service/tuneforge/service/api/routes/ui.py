"""The built-in dashboard at ``/ui``: static HTML/JS/CSS, served without an API key.

The page itself holds no data: it asks for an API key in the browser and calls the API with it (the job
list, the job, and the event stream), so every piece of data goes through the usual tenant-scoped auth.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import FileResponse, RedirectResponse

from tuneforge.service.api.routing import Router
from tuneforge.service.core.errors import NotFound

UI_DIR = Path(__file__).resolve().parents[2] / "ui"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "rate.js": "text/javascript", "rate.css": "text/css"}
#: the page talks only to this origin; no inline scripts, no third-party anything
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

router = Router(tags=["dashboard"], include_in_schema=False)


@router.get("/ui")
def index() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/ui/rate")
def rating_page() -> FileResponse:
    """The raters' page (feedback campaigns): one item at a time, with a rater key."""
    return FileResponse(UI_DIR / "rate.html", media_type="text/html", headers=HEADERS)


@router.get("/ui/")
def index_slash() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=308)


@router.get("/ui/{asset}")
def asset(asset: str) -> FileResponse:
    if asset not in ASSETS:
        raise NotFound("dashboard file", asset)
    return FileResponse(UI_DIR / asset, media_type=ASSETS[asset], headers=HEADERS)
