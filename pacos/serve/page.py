"""The chat page at `/`: plain HTML, CSS and JavaScript shipped in `static/` (no build step, nothing
fetched from elsewhere). The page itself needs no key; its API calls send the same bearer key as any
client, which the page asks for when /v1 answers 401 and keeps in the tab's sessionStorage."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from pacos.serve.errors import APIError

STATIC = Path(__file__).with_name("static")
FILES = {"app.js": "text/javascript", "style.css": "text/css"}  # what /static/ serves, and nothing else
# Model output is escaped before it is rendered; the policy is a second line: no inline or foreign
# script, no connections to other origins, no framing of the page by another site.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# no-cache: revalidated (by ETag) on every load, so an upgraded server never runs yesterday's app.js.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def add_chat_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        headers = {**HEADERS, "Content-Security-Policy": POLICY, "Referrer-Policy": "no-referrer"}
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=headers)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in FILES:
            raise APIError(404, f"Invalid URL (GET /static/{name})", code="not_found")
        return FileResponse(STATIC / name, media_type=FILES[name], headers=HEADERS)
