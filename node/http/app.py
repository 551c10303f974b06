"""FastAPI application factory.

Every request goes through two ASGI middlewares first (outermost first):
`spinexr.node.http.ratelimit.AuthLockoutMiddleware` (429 for an address locked out after
repeated failed authentications) and `spinexr.node.http.bodylimits.RequestBodyGuard`
(413 for a STOW-RS body over ``http.max_stow_bytes``, 408 for a body that stalls longer than
``http.body_timeout_seconds``).
"""

from __future__ import annotations

from fastapi import FastAPI

from spinexr.node import __version__
from spinexr.node.http.bodylimits import RequestBodyGuard
from spinexr.node.http.ratelimit import AuthFailureLimiter, AuthLockoutMiddleware
from spinexr.node.ingest.service import IngestService
from spinexr.node.settings import Settings


def create_app(settings: Settings, ingest: IngestService | None = None) -> FastAPI:
    """Build the HTTP application for ``settings``.

    Parameters
    ----------
    settings : Settings
        Validated settings.
    ingest : IngestService, optional
        When given, STOW-RS routes and the admin API and pages are mounted.

    Returns
    -------
    FastAPI
        The application.
    """
    app = FastAPI(title="spinexr-node", version=__version__, docs_url=None, redoc_url=None)
    app.state.settings = settings
    http = settings.http
    # Added last = runs first: a locked-out address is refused before its body is looked at.
    app.add_middleware(
        RequestBodyGuard,
        timeout=http.body_timeout_seconds,
        limits={"/dicomweb": http.max_stow_bytes},
    )
    app.state.auth_limiter = AuthFailureLimiter(
        http.auth_max_failures, http.auth_failure_window_seconds, http.auth_lockout_seconds
    )
    app.add_middleware(AuthLockoutMiddleware, limiter=app.state.auth_limiter)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Process is up."""
        return {"status": "ok", "version": __version__}

    from spinexr.node.http.health import Operations
    from spinexr.node.http.health import make_router as health_router

    app.state.operations = Operations(settings)  # /readyz and /metrics
    app.include_router(health_router(app.state.operations))
    if ingest is not None:
        from spinexr.node.http.stow import make_router

        app.include_router(make_router(ingest))
    if ingest is not None:
        from spinexr.node.http.admin import include_admin

        include_admin(app, settings, ingest.sessions)
    return app
