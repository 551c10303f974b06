"""The admin web pages, ``/admin``: dashboard, studies, study (with previews), failures.

Server-rendered Jinja2, no JavaScript. Same token as the API: the login form takes
``http.api_token`` and sets a signed ``HttpOnly; SameSite=Strict`` session cookie
(`spinexr.node.http.admin.auth`); actions are POST forms carrying a CSRF token and
redirect back with a one-time flash message. Pages are sent with ``Cache-Control:
no-store`` and a Content Security Policy that allows only this origin's style sheet and
images. Patient name and ID appear on the study page (behind the login) and never in logs.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlencode

import jinja2
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from spinexr.node.admin import actions, jobs, studies
from spinexr.node.admin.errors import ConflictError, NotFoundError, UnprocessableError
from spinexr.node.db.states import JobState, StudyStatus
from spinexr.node.http.admin import dashboard, preview, vertebrae
from spinexr.node.http.admin.auth import (
    DISABLED,
    SESSION_COOKIE,
    SESSION_SECONDS,
    configured_token,
    csrf_token,
    csrf_valid,
    issue_session,
    session_valid,
    token_matches,
)
from spinexr.node.http.admin.context import AdminContext, admin_context
from spinexr.pipeline.ct.series import CT_SOP_CLASSES

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
FLASH_COOKIE = "spinexr_flash"
ACTOR: actions.Actor = "admin-web"
PER_PAGE = 50

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class LoginRequiredError(Exception):
    """No valid session: the page redirects to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class PageError(Exception):
    """A page-level error shown as an error page with its status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------- rendering


def _when(value: dt.datetime | str | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f} MiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def make_templates() -> Jinja2Templates:
    """Return the page templates with their filters (autoescaped).

    Returns
    -------
    Jinja2Templates
        Templates from ``templates/``.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, mib=_mib, duration=_duration, number=_number, q=quote)
    return Jinja2Templates(env=env)


TEMPLATES = make_templates()


def _secure(response: Response) -> Response:
    for key, value in SECURITY_HEADERS.items():
        response.headers[key] = value
    return response


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    session: str | None = None,
    status: int = 200,
) -> Response:
    """Render a page with the shared context (CSRF token, flash message, demo banner).

    Parameters
    ----------
    request : Request
        The request.
    name : str
        Template file.
    context : dict
        Page values.
    session : str, optional
        The session cookie (for the CSRF token of the page's forms).
    status : int
        HTTP status.

    Returns
    -------
    Response
        The page, with the security headers; a flash message shown is cleared.
    """
    token = configured_token(request)
    flash = None
    raw = request.cookies.get(FLASH_COOKIE)
    if raw:
        kind, _, text = unquote(raw).partition(":")
        flash = {"kind": "error" if kind == "error" else "ok", "text": text[:300]}
    bundle: dict[str, Any] = {}
    ctx = getattr(request.app.state, "admin", None)
    if session is not None and isinstance(ctx, AdminContext):
        bundle = ctx.bundle.get()
    values = {
        "csrf": csrf_token(token, session) if session and token else "",
        "flash": flash,
        "demo": bool(bundle.get("loaded") and bundle.get("demo")),
        "demo_warning": dashboard.DEMO_WARNING,
        **context,
    }
    response = TEMPLATES.TemplateResponse(request, name, values, status_code=status)
    if raw:
        response.delete_cookie(FLASH_COOKIE, path="/admin")
    return _secure(response)


def _redirect(request: Request, to: str, kind: str, text: str) -> Response:
    response = RedirectResponse(to, status_code=303)
    response.set_cookie(
        FLASH_COOKIE,
        quote(f"{kind}:{text}"),
        max_age=60,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=_https(request),
    )
    return _secure(response)


def _safe_next(value: str | None, default: str = "/admin/") -> str:
    """Only same-site admin paths (no open redirect)."""
    if value and value.startswith("/admin") and not value.startswith("//") and "\\" not in value:
        return value
    return default


# ----------------------------------------------------------------------------- auth


def page_session(request: Request) -> str:
    """FastAPI dependency: the valid session cookie, or a redirect to the login form.

    Parameters
    ----------
    request : Request
        The request.

    Returns
    -------
    str
        The session cookie value.

    Raises
    ------
    PageError
        503 when no token is configured.
    LoginRequiredError
        Without a valid session.
    """
    token = configured_token(request)
    if not token:
        raise PageError(503, DISABLED.replace("API", "pages"))
    value = request.cookies.get(SESSION_COOKIE, "")
    if not session_valid(token, value):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequiredError(target)
    return value


PageSession = Annotated[str, Depends(page_session)]
Ctx = Annotated[AdminContext, Depends(admin_context)]


def _check_csrf(request: Request, session: str, given: str) -> None:
    if not csrf_valid(configured_token(request), session, given):
        raise PageError(403, "invalid or missing CSRF token: reload the page and try again")


# ----------------------------------------------------------------------------- routes


def make_pages_router() -> APIRouter:
    """Return the ``/admin`` routes.

    Returns
    -------
    APIRouter
        Login, dashboard, studies, study, preview, failures and the action forms.
    """
    router = APIRouter(prefix="/admin", include_in_schema=False)

    @router.get("/login")
    def login_form(request: Request, next: str = "/admin/") -> Response:
        """Show the login form."""
        if not configured_token(request):
            raise PageError(503, DISABLED.replace("API", "pages"))
        return render(request, "login.html", {"next": _safe_next(next), "error": None})

    @router.post("/login")
    def login(
        request: Request,
        token: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/admin/",
    ) -> Response:
        """Check the token; on success set the session cookie and go on."""
        configured = configured_token(request)
        if not configured:
            raise PageError(503, DISABLED.replace("API", "pages"))
        if not token_matches(token, configured):
            client = request.client.host if request.client else "?"
            logger.warning("admin login refused from %s", client)
            return render(
                request,
                "login.html",
                {"next": _safe_next(next), "error": "Wrong token."},
                status=401,
            )
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            issue_session(configured),
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="strict",
            secure=_https(request),
        )
        return _secure(response)

    @router.post("/logout")
    def logout(
        request: Request, session: PageSession, csrf: Annotated[str, Form()] = ""
    ) -> Response:
        """End the session."""
        _check_csrf(request, session, csrf)
        response = RedirectResponse("/admin/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return _secure(response)

    @router.get("/")
    def dashboard_page(request: Request, session: PageSession, ctx: Ctx) -> Response:
        """Show queues, jobs, throughput, turnaround, disk, workers, warnings."""
        data = dashboard.overview(ctx.settings, ctx.sessions, ctx.bundle.get())
        return render(
            request,
            "dashboard.html",
            {"o": data, "states": [s.value for s in JobState]},
            session=session,
        )

    @router.get("/studies")
    def studies_page(
        request: Request,
        session: PageSession,
        ctx: Ctx,
        accession: str = "",
        uid: str = "",
        status: str = "",
        job_state: str = "",
        page: int = 1,
    ) -> Response:
        """Search studies by accession, UID, status and job state."""
        errors = []
        study_status = job = None
        if status:
            try:
                study_status = StudyStatus(status)
            except ValueError:
                errors.append(f"unknown study status {status!r}")
        if job_state:
            try:
                job = JobState(job_state)
            except ValueError:
                errors.append(f"unknown job state {job_state!r}")
        page = max(1, page)
        rows: list[dict[str, Any]] = []
        total = 0
        if not errors:
            rows, total = studies.find_studies(
                ctx.sessions,
                accession=accession.strip() or None,
                study_uid=uid.strip() or None,
                status=study_status,
                job_state=job,
                page=page,
                per_page=PER_PAGE,
            )
        query = {"accession": accession, "uid": uid, "status": status, "job_state": job_state}
        base = urlencode({k: v for k, v in query.items() if v})
        return render(
            request,
            "studies.html",
            {
                "rows": rows,
                "total": total,
                "page": page,
                "pages": max(1, -(-total // PER_PAGE)),
                "query": query,
                "base": base,
                "errors": errors,
                "statuses": [s.value for s in StudyStatus],
                "states": [s.value for s in JobState],
            },
            session=session,
            status=422 if errors else 200,
        )

    @router.get("/studies/{uid}")
    def study_page(request: Request, session: PageSession, ctx: Ctx, uid: str) -> Response:
        """Show a study: header, result, image previews with findings, jobs, timeline."""
        try:
            data = studies.study_detail(ctx.sessions, uid)
        except NotFoundError as exc:
            raise PageError(404, str(exc)) from exc
        header = studies.study_header(ctx.settings.storage.spool_dir, ctx.sessions, uid)
        latest: dict[str, dict[str, Any]] = {}
        for instance in data["instances"]:
            latest[instance["sop_instance_uid"]] = instance  # versions ascend: last wins
        findings: dict[str, dict[str, Any]] = {}
        if data["result"] is not None:
            findings = {i["sop_instance_uid"]: i for i in data["result"]["images"]}
        # A CT series has hundreds of slices: one row per series, not a preview per slice.
        images = [i for i in latest.values() if i["sop_class_uid"] not in CT_SOP_CLASSES]
        ct_series: dict[str, dict[str, Any]] = {}
        for i in latest.values():
            if i["sop_class_uid"] in CT_SOP_CLASSES:
                row = ct_series.setdefault(
                    i["series_instance_uid"],
                    {"series_instance_uid": i["series_instance_uid"], "instances": 0, "bytes": 0},
                )
                row["instances"] += 1
                row["bytes"] += i["size_bytes"]
                row["decision"] = i["decision"]
        return render(
            request,
            "study.html",
            {
                "s": data,
                "header": header,
                "images": images,
                "ct_series": list(ct_series.values()),
                "findings": findings,
                "vertebrae": vertebrae.study_vertebrae(ctx.sessions, data),
                "ct": vertebrae.study_ct(ctx.sessions, data),
            },
            session=session,
        )

    @router.get("/studies/{uid}/instances/{sop_uid}/preview.png")
    def preview_png(_session: PageSession, ctx: Ctx, uid: str, sop_uid: str) -> Response:
        """Send the image rendered with its GSPS (or the result's boxes) as PNG."""
        try:
            png = preview.preview_bytes(ctx.settings, ctx.sessions, uid, sop_uid)
        except NotFoundError as exc:
            raise PageError(404, str(exc)) from exc
        except UnprocessableError as exc:
            raise PageError(422, str(exc)) from exc
        response = Response(png, media_type="image/png")
        response.headers["Cache-Control"] = "private, no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @router.get("/failures")
    def failures_page(request: Request, session: PageSession, ctx: Ctx) -> Response:
        """List failed and dead-letter jobs and export failures, with Retry buttons."""
        return render(request, "failures.html", jobs.failures(ctx.sessions), session=session)

    def _act(
        request: Request, session: str, csrf: str, back: str, work: Any, ok_text: Any
    ) -> Response:
        _check_csrf(request, session, csrf)
        target = _safe_next(back)
        try:
            done = work()
        except (NotFoundError, ConflictError) as exc:
            return _redirect(request, target, "error", str(exc))
        text: str = ok_text(done)
        return _redirect(request, target, "ok", text)

    @router.post("/jobs/{job_id}/retry")
    def retry(
        request: Request,
        session: PageSession,
        ctx: Ctx,
        job_id: int,
        csrf: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/admin/failures",
    ) -> Response:
        """Retry a job, then back with a flash message."""
        return _act(
            request,
            session,
            csrf,
            next,
            lambda: actions.retry(ctx.sessions, ctx.dispatcher, job_id, ACTOR),
            lambda done: f"{done.message} (now {done.state})",
        )

    @router.post("/jobs/{job_id}/cancel")
    def cancel(
        request: Request,
        session: PageSession,
        ctx: Ctx,
        job_id: int,
        csrf: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/admin/",
    ) -> Response:
        """Cancel a job, then back with a flash message."""
        return _act(
            request,
            session,
            csrf,
            next,
            lambda: actions.cancel(ctx.sessions, job_id, ACTOR),
            lambda done: done.message,
        )

    @router.post("/studies/{uid}/complete")
    def complete(
        request: Request,
        session: PageSession,
        ctx: Ctx,
        uid: str,
        csrf: Annotated[str, Form()] = "",
    ) -> Response:
        """Complete a study now, then back to its page."""
        return _act(
            request,
            session,
            csrf,
            f"/admin/studies/{quote(uid)}",
            lambda: actions.complete_study(ctx.settings, ctx.sessions, ctx.dispatcher, uid, ACTOR),
            lambda done: done.message,
        )

    return router


def login_redirect(request: Request, exc: Exception) -> Response:
    """Exception handler: `LoginRequiredError` → 303 to the login form."""
    assert isinstance(exc, LoginRequiredError)
    target = "/admin/login?" + urlencode({"next": _safe_next(exc.next_path)})
    return _secure(RedirectResponse(target, status_code=303))


def error_page(request: Request, exc: Exception) -> Response:
    """Exception handler: `PageError` → an error page with its status."""
    assert isinstance(exc, PageError)
    return render(
        request, "error.html", {"status": exc.status, "message": exc.message}, status=exc.status
    )
