"""FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI
from spinexr.node import __version__
from spinexr.node.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    """Build the HTTP application for ``settings``.

    Parameters
    ----------
    settings : Settings
        Validated settings.

    Returns
    -------
    FastAPI
        The application.
    """
    app = FastAPI(title="spinexr-node", version=__version__, docs_url=None, redoc_url=None)
    app.state.settings = settings

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Process is up."""
        return {"status": "ok", "version": __version__}

    return app
