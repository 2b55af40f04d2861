"""The console at ``/console/``: a static page that is an application in the browser.

The page signs in with an account's id and password, and does everything
through the public interfaces — REST with HTTP Basic, Bayeux at ``/cometd``
with the handshake's ``ext.authentication`` — using the CometD JavaScript
client vendored under ``static/vendor/cometd`` (no CDN, no build step).  The
page itself is public; it holds no data.  Its pickers come from
``/console/model.json``, made from the enums of :mod:`pidf.model`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from pidf import Activity, AttributeType, Place, Privacy, Sphere

__all__ = ["PATH", "console_routes"]

PATH = "/console"


def model() -> dict[str, list[str]]:
    """The values the console offers: the spec's enums and attribute types."""
    return {
        "attributes": [t.value for t in AttributeType],
        **{kind.__name__: [v.value for v in kind] for kind in (Activity, Place, Privacy, Sphere)},
    }


def console_routes() -> list[BaseRoute]:
    document = model()

    async def to_page(request: Request) -> Response:
        # Relative, so that it holds under a proxy's path prefix too.
        return RedirectResponse("console/", status_code=308)

    async def serve_model(request: Request) -> Response:
        return JSONResponse(document)

    return [
        Route(PATH, to_page, methods=["GET"]),
        Route(f"{PATH}/model.json", serve_model, methods=["GET"]),
        Mount(PATH, StaticFiles(packages=[("adapter.console", "static")], html=True)),
    ]
