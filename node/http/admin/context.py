"""What the admin routes share: settings, database sessions, the bundle, the queue."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.admin.actions import Dispatcher
from spinexr.node.http.admin.bundleinfo import BundleInfo
from spinexr.node.settings import Settings


@dataclass
class AdminContext:
    """State of the admin API and pages, kept on ``app.state.admin``.

    Attributes
    ----------
    settings : Settings
        The node's settings.
    sessions : sessionmaker
        Database sessions.
    bundle : BundleInfo
        The configured bundle, verified once.
    dispatcher : Dispatcher
        The queue that retried and completed jobs go to.
    """

    settings: Settings
    sessions: sessionmaker[Session]
    bundle: BundleInfo
    dispatcher: Dispatcher


def admin_context(request: Request) -> AdminContext:
    """FastAPI dependency: the app's `AdminContext`.

    Parameters
    ----------
    request : Request
        The request.

    Returns
    -------
    AdminContext
        The context.
    """
    ctx = request.app.state.admin
    assert isinstance(ctx, AdminContext)
    return ctx
