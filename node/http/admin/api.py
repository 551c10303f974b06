"""The admin HTTP API, ``/api/v1``: studies, jobs, actions, destinations, bundle, settings.

Every route needs ``Authorization: Bearer <http.api_token>`` (503 while no token is set).
Errors are JSON ``{"detail": "..."}``: 401 wrong token, 404 unknown study/job/destination,
409 an action the object's state does not allow, 422 invalid parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query

from spinexr.node.admin import actions, destinations, jobs, studies
from spinexr.node.admin.errors import ConflictError, NotFoundError, UnprocessableError
from spinexr.node.admin.secrets import effective_settings
from spinexr.node.db.states import JobState, StudyStatus
from spinexr.node.http.admin import dashboard
from spinexr.node.http.admin.auth import require_api_token
from spinexr.node.http.admin.context import AdminContext, admin_context
from spinexr.node.http.admin.schemas import (
    ActionOut,
    BundleOut,
    DestinationOut,
    DestinationTest,
    JobDetail,
    JobOut,
    Overview,
    StudyDetail,
    StudyPage,
    StudyRow,
)

ACTOR: actions.Actor = "admin-api"

T = TypeVar("T")

Ctx = Annotated[AdminContext, Depends(admin_context)]


def translate(call: Callable[[], T]) -> T:
    """Run ``call``, turning the admin errors into HTTP errors (404, 409, 422).

    Parameters
    ----------
    call : callable
        The work.

    Returns
    -------
    object
        What ``call`` returned.

    Raises
    ------
    HTTPException
        For `NotFoundError`, `ConflictError` and `UnprocessableError`.
    """
    try:
        return call()
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    except ConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    except UnprocessableError as exc:
        raise HTTPException(422, str(exc)) from exc


def make_api_router() -> APIRouter:
    """Return the ``/api/v1`` routes.

    Returns
    -------
    APIRouter
        The routes, all behind the bearer token.
    """
    router = APIRouter(prefix="/api/v1", tags=["admin"], dependencies=[Depends(require_api_token)])

    @router.get("/studies", response_model=StudyPage)
    def study_search(
        ctx: Ctx,
        accession: Annotated[str | None, Query(max_length=16)] = None,
        study_uid: Annotated[str | None, Query(max_length=64)] = None,
        status: StudyStatus | None = None,
        job_state: JobState | None = None,
        page: Annotated[int, Query(ge=1)] = 1,
        per_page: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> StudyPage:
        """Search studies (accession exact, UID prefix, status, latest job's state)."""
        rows, total = studies.find_studies(
            ctx.sessions,
            accession=accession,
            study_uid=study_uid,
            status=status,
            job_state=job_state,
            page=page,
            per_page=per_page,
        )
        return StudyPage(
            items=[StudyRow.model_validate(r) for r in rows],
            page=page,
            per_page=per_page,
            total=total,
        )

    @router.get("/studies/{uid}", response_model=StudyDetail)
    def study(ctx: Ctx, uid: str) -> StudyDetail:
        """Return a study: instances, jobs with results, outputs and exports, timeline."""
        return StudyDetail.model_validate(
            translate(lambda: studies.study_detail(ctx.sessions, uid))
        )

    @router.post("/studies/{uid}/complete", response_model=ActionOut)
    def complete(ctx: Ctx, uid: str) -> ActionOut:
        """Complete a study now (creates and queues its job when there is one to run)."""
        done = translate(
            lambda: actions.complete_study(ctx.settings, ctx.sessions, ctx.dispatcher, uid, ACTOR)
        )
        return ActionOut.model_validate(done, from_attributes=True)

    @router.get("/jobs", response_model=list[JobOut])
    def job_list(
        ctx: Ctx,
        state: JobState | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[JobOut]:
        """List the newest jobs, optionally of one state."""
        rows = jobs.list_jobs(ctx.sessions, state.value if state else None, limit)
        return [JobOut.model_validate(r) for r in rows]

    @router.get("/jobs/{job_id}", response_model=JobDetail)
    def job(ctx: Ctx, job_id: int) -> JobDetail:
        """Return a job: state, last error, result, outputs and export attempts."""
        return JobDetail.model_validate(translate(lambda: jobs.show_job(ctx.sessions, job_id)))

    @router.post("/jobs/{job_id}/retry", response_model=ActionOut)
    def retry(ctx: Ctx, job_id: int) -> ActionOut:
        """Run a failed, dead, cancelled or finished job again (export only if built)."""
        done = translate(lambda: actions.retry(ctx.sessions, ctx.dispatcher, job_id, ACTOR))
        return ActionOut.model_validate(done, from_attributes=True)

    @router.post("/jobs/{job_id}/cancel", response_model=ActionOut)
    def cancel(ctx: Ctx, job_id: int) -> ActionOut:
        """Cancel a job that has not finished."""
        done = translate(lambda: actions.cancel(ctx.sessions, job_id, ACTOR))
        return ActionOut.model_validate(done, from_attributes=True)

    @router.get("/destinations", response_model=list[DestinationOut])
    def destination_list(ctx: Ctx) -> list[DestinationOut]:
        """List the configured destinations (no secrets)."""
        return [
            DestinationOut.model_validate(destinations.describe(d))
            for d in ctx.settings.destinations
        ]

    @router.post("/destinations/{name}/echo", response_model=DestinationTest)
    def destination_echo(ctx: Ctx, name: str) -> DestinationTest:
        """C-ECHO a DIMSE destination or QIDO-RS a DICOMweb one; status and round trip."""
        dest = translate(lambda: destinations.find(ctx.settings, name))
        return DestinationTest.model_validate(
            destinations.check_destination(ctx.settings, dest), from_attributes=True
        )

    @router.get("/bundle", response_model=BundleOut)
    def bundle(ctx: Ctx) -> BundleOut:
        """Describe the model bundle: name, version, demo flag, c*, metrics, device UID."""
        return BundleOut.model_validate(ctx.bundle.get())

    @router.get("/settings")
    def settings_view(ctx: Ctx) -> dict[str, Any]:
        """Return the effective settings, secrets masked."""
        return effective_settings(ctx.settings)

    @router.get("/overview", response_model=Overview)
    def overview(ctx: Ctx) -> Overview:
        """Return the dashboard's figures as JSON."""
        return Overview.model_validate(
            dashboard.overview(ctx.settings, ctx.sessions, ctx.bundle.get())
        )

    return router
