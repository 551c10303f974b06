"""STOW-RS (PS3.18 10.5): ``POST /dicomweb/studies[/{study}]``, multipart/related.

Each part goes through the same :class:`IngestService` as C-STORE, so durability, rules and
loop prevention are identical. The body is parsed as it streams in; a part larger than
``dicom.max_dataset_bytes`` is dropped as it arrives and reported as failed.

The whole body is bounded before this module sees it (`spinexr.node.http.bodylimits`): a
body over ``http.max_stow_bytes`` is answered 413 (at once for a declared Content-Length,
as soon as a chunked body grows past it), and a body that stalls longer than
``http.body_timeout_seconds`` is answered 408; both close the connection.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset
from pydicom.uid import ComputedRadiographyImageStorage
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from spinexr.node.errors import IngestError, is_database_unavailable, is_disk_full
from spinexr.node.ingest.service import IngestService, Outcome
from spinexr.node.ingest.statuses import status_for

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"


def require_token(request: Request) -> None:
    """Check ``Authorization: Bearer <http.api_token>`` when a token is configured."""
    token = request.app.state.settings.http.api_token.get_secret_value()
    if not token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), token):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


class _Part:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.content_type = ""
        self.too_large = False

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.too_large = True
            self.chunks.clear()
        elif not self.too_large:
            self.chunks.append(data)


async def _parse_parts(request: Request, limit: int) -> list[_Part]:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/related":
        raise HTTPException(415, 'expected multipart/related; type="application/dicom"')
    part_type = params.get(b"type", b"application/dicom").lower()
    boundary = params.get(b"boundary")
    if part_type != b"application/dicom" or not boundary:
        raise HTTPException(415, 'expected type="application/dicom" with a boundary')
    parts: list[_Part] = []
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        parts.append(_Part(limit))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].add(bytes(data[start:end]))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        if header_field.lower() == b"content-type":
            parts[-1].content_type = header_value.decode("latin-1").split(";")[0].strip().lower()
        header_field.clear()
        header_value.clear()

    callbacks: Any = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:  # its message names sizes and offsets, never body bytes
        raise HTTPException(400, f"malformed multipart body: {exc}") from exc
    except ClientDisconnect as exc:  # nothing to answer: the client has gone
        raise HTTPException(400, "the client closed the connection before the body ended") from exc
    return parts


def _item(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class or ComputedRadiographyImageStorage
    item.ReferencedSOPInstanceUID = sop_instance or "0"
    if reason is not None:
        item.FailureReason = reason
    return item


def make_router(ingest: IngestService) -> APIRouter:
    """Return the STOW-RS routes bound to ``ingest``.

    Parameters
    ----------
    ingest : IngestService
        The shared ingest path.

    Returns
    -------
    APIRouter
        Routes under ``/dicomweb``.
    """
    router = APIRouter(prefix="/dicomweb", dependencies=[Depends(require_token)])

    async def store(request: Request, study: str | None) -> JSONResponse:
        limit = ingest.settings.dicom.max_dataset_bytes
        try:
            await run_in_threadpool(ingest.check_space)
        except IngestError as exc:
            logger.warning("STOW-RS refused: %s", exc)
            raise HTTPException(503, str(exc), headers={"Retry-After": "60"}) from exc
        parts = await _parse_parts(request, limit)
        stored: list[Dataset] = []
        failed: list[Dataset] = []
        full = unavailable = False  # a part met a full disk, or no database
        for index, part in enumerate(parts):
            if part.content_type and part.content_type != "application/dicom":
                failed.append(_item("", "", status_for("unparseable")))
                continue
            if part.too_large:
                logger.warning("STOW-RS part %d refused: larger than %d bytes", index, limit)
                failed.append(_item("", "", status_for("too_large")))
                continue
            try:
                result = await run_in_threadpool(
                    ingest.ingest,
                    part.chunks,
                    calling_ae="STOW-RS",
                    source="stowrs",
                    expected_study_uid=study,
                )
            except IngestError as exc:
                logger.warning("STOW-RS part %d refused: %s", index, exc)
                failed.append(_item("", "", status_for(exc.reason)))
                continue
            except (OSError, SQLAlchemyError) as exc:
                if is_disk_full(exc):
                    logger.error("STOW-RS part %d refused: the disk is full", index)
                    full = True
                    failed.append(_item("", "", status_for("out_of_resources")))
                    continue
                if is_database_unavailable(exc):
                    logger.error("STOW-RS part %d not stored: the database is unavailable", index)
                    unavailable = True
                else:
                    logger.error("STOW-RS part %d: storage failure (%s)", index, type(exc).__name__)
                failed.append(_item("", "", status_for("storage_failure")))
                continue
            except Exception:  # a defect: this part fails, the others are still stored
                logger.exception("STOW-RS part %d: internal error", index)
                failed.append(_item("", "", status_for("internal")))
                continue
            if result.outcome is not Outcome.DROPPED_OWN:
                logger.info("STOW-RS %s: %s", result.sop_instance_uid, result.outcome.value)
            stored.append(_item(result.sop_class_uid, result.sop_instance_uid))
        response = Dataset()
        if stored:
            response.ReferencedSOPSequence = stored
        if failed:
            response.FailedSOPSequence = failed
        if not parts:
            raise HTTPException(400, "no parts in the request body")
        if (full or unavailable) and not stored:  # as below the watermark: come back later
            why = "the disk is full" if full else "the database is unavailable"
            raise HTTPException(503, why, headers={"Retry-After": "60"})
        code = 200 if not failed else (202 if stored else 409)
        return JSONResponse(response.to_json_dict(), status_code=code, media_type=DICOM_JSON)

    @router.post("/studies")
    async def stow(request: Request) -> JSONResponse:
        """Store instances of any study."""
        return await store(request, None)

    @router.post("/studies/{study}")
    async def stow_study(study: str, request: Request) -> JSONResponse:
        """Store instances of one study; others are refused per instance."""
        return await store(request, study)

    return router
