"""Admin HTTP API (``/api/v1``) and web pages (``/admin``) of the node.

`include_admin` mounts both on the node's FastAPI app. Both are refused (503) while
``http.api_token`` is empty.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.admin.actions import CeleryDispatcher, Dispatcher
from spinexr.node.http.admin.api import make_api_router
from spinexr.node.http.admin.bundleinfo import BundleInfo
from spinexr.node.http.admin.context import AdminContext
from spinexr.node.http.admin.pages import (
    STATIC_DIR,
    LoginRequiredError,
    PageError,
    error_page,
    login_redirect,
    make_pages_router,
)
from spinexr.node.settings import Settings


def include_admin(
    app: FastAPI,
    settings: Settings,
    sessions: sessionmaker[Session],
    dispatcher: Dispatcher | None = None,
) -> AdminContext:
    """Mount the admin API, the admin pages and their style sheet on ``app``.

    Parameters
    ----------
    app : FastAPI
        The node's application.
    settings : Settings
        The node's settings (``http.api_token``, ``models.bundle``, folders, destinations).
    sessions : sessionmaker
        Database sessions.
    dispatcher : Dispatcher, optional
        Where retried and completed jobs are queued; the node's Celery queues by default.

    Returns
    -------
    AdminContext
        The shared state, also kept on ``app.state.admin``.
    """
    ctx = AdminContext(
        settings=settings,
        sessions=sessions,
        bundle=BundleInfo(settings.models.bundle),
        dispatcher=dispatcher or CeleryDispatcher(settings),
    )
    app.state.admin = ctx
    app.include_router(make_api_router())
    app.include_router(make_pages_router())
    app.mount("/admin/static", StaticFiles(directory=STATIC_DIR), name="admin-static")
    app.add_exception_handler(LoginRequiredError, login_redirect)
    app.add_exception_handler(PageError, error_page)
    return ctx


__all__ = ["AdminContext", "include_admin"]
