"""JSON bodies of the admin API (``/api/v1``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StudyRow(_Out):
    """A study in a search result."""

    study_instance_uid: str
    accession_number: str | None
    modality: str | None
    calling_ae: str | None
    instances: int
    status: str
    decision: str | None
    job_id: int | None
    job_state: str | None
    first_received_at: dt.datetime
    last_received_at: dt.datetime


class StudyPage(_Out):
    """One page of a study search."""

    items: list[StudyRow]
    page: int
    per_page: int
    total: int


class InstanceOut(_Out):
    """A received instance."""

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    version: int
    size_bytes: int
    decision: str
    received_at: dt.datetime


class BoxOut(_Out):
    """A displayed finding box, in original image pixels."""

    label: str
    class_id: int
    score: float
    xmin: float
    ymin: float
    xmax: float
    ymax: float


class ImageFindings(_Out):
    """One image's analysis."""

    sop_instance_uid: str
    probability: float | None
    decision: bool | None
    error: str | None
    boxes: list[BoxOut]


class ResultOut(_Out):
    """A job's study-level result and its findings."""

    outcome: str
    probability: float | None
    threshold: float | None
    abnormal: bool | None
    bundle_name: str | None
    bundle_version: str | None
    device_uid: str | None
    demo: bool | None
    failure_reason: str | None
    flagged_classes: list[str]
    boxes_displayed: int
    images: list[ImageFindings]


class OutputOut(_Out):
    """A built output object."""

    kind: str
    sop_instance_uid: str
    source_sop_instance_uid: str | None = None
    path: str


class ExportOut(_Out):
    """One export attempt of one object to one destination."""

    destination: str
    attempt: int
    status: str
    dimse_status: int | None
    http_status: int | None
    error: str | None
    verified: bool | None


class JobOut(_Out):
    """A job in a list."""

    id: int
    study_instance_uid: str
    state: str
    priority: int
    attempts: int
    max_attempts: int
    lease_owner: str | None
    last_error: str | None
    bundle_version: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class ResultBrief(_Out):
    """A job's result in the job view."""

    outcome: str
    probability: float | None
    threshold: float | None


class JobDetail(JobOut):
    """A job with its outputs, export attempts and result."""

    outputs: list[OutputOut]
    exports: list[ExportOut]
    result: ResultBrief | None


class StudyJob(JobOut):
    """A job within a study, its result with the findings."""

    superseded_job_id: int | None
    superseded_by: int | None = None
    current: bool = False
    outputs: list[OutputOut]
    exports: list[ExportOut]
    result: ResultOut | None


class EventOut(_Out):
    """A line of a study's audit timeline."""

    at: dt.datetime
    event: str
    job_id: int | None
    from_state: str | None
    to_state: str | None
    detail: str | None


class StudyDetail(_Out):
    """A study with everything the node knows of it.

    ``result`` is the current job's result (``current_job_id``: the newest job not
    cancelled); earlier jobs keep theirs, with the job that ``superseded_by`` them.
    """

    study_instance_uid: str
    accession_number: str | None
    modality: str | None
    source: str
    calling_ae: str | None
    status: str
    decision: str | None
    priority: int
    first_received_at: dt.datetime
    last_received_at: dt.datetime
    completed_at: dt.datetime | None
    instances: list[InstanceOut]
    jobs: list[StudyJob]
    current_job_id: int | None = None
    result: ResultOut | None
    timeline: list[EventOut]


class ActionOut(_Out):
    """What an admin action did."""

    job_id: int | None
    state: str | None
    message: str
    published: bool


class DestinationOut(_Out):
    """A destination, without secrets."""

    name: str
    kind: str
    ae_title: str | None
    host: str | None
    port: int | None
    url: str | None
    objects: list[str]
    verify: bool
    auth: str


class DestinationTest(_Out):
    """Outcome of a C-ECHO or QIDO-RS test of a destination."""

    name: str
    kind: str
    method: str
    ok: bool
    status: int | None
    http_status: int | None
    round_trip_ms: float
    error: str | None


class BundleOut(_Out):
    """The model bundle this node is configured with."""

    configured: bool
    loaded: bool
    error: str | None
    directory: str | None
    name: str | None = None
    version: str | None = None
    demo: bool | None = None
    threshold: float | None = None
    threshold_method: str | None = None
    display_threshold: float | None = None
    fusion: str | None = None
    metrics: dict[str, Any] | None = None
    training_data: dict[str, Any] | None = None
    created: dt.datetime | None = None
    device_uid: str | None = None
    classes: list[str] | None = None
    preparing: dict[str, Any] | None = None


class Overview(_Out):
    """The dashboard's figures."""

    generated_at: dt.datetime
    queue_depths: dict[str, int | None]
    queue_mode: str
    jobs: dict[str, int]
    oldest_waiting: dict[str, int] | None
    failed_export_attempts: int
    activity: dict[str, Any]
    disk: dict[str, Any]
    workers: dict[str, Any]
    bundle: BundleOut
    warnings: list[str]
