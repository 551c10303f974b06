"""Preview PNGs of received images with the AI's boxes, cached under the data folder.

The image is rendered by `spinexr.node.outputs.render` with the GSPS the node built for it
(the latest job that has one), so the admin sees what a viewer that renders GSPS shows.
Without a GSPS (a site profile without them) the boxes of the latest result are drawn in
their class colours on the node's display rendering. PNGs are cached in
``<data_dir>/previews/``, named after the image version and the presentation state or
result they show, so a new analysis gives a new file. The cache is bounded in size and age
(``http.preview_cache_mb``, ``http.preview_cache_max_age_days``; see
`spinexr.node.http.admin.previewcache`).
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydantic import ValidationError
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.admin.errors import NotFoundError, UnprocessableError
from spinexr.node.db.models import Instance, Job, OutputObject, Result, Study
from spinexr.node.db.states import OutputKind
from spinexr.node.http.admin import previewcache
from spinexr.node.outputs.boxes import CLASS_COLOURS
from spinexr.node.outputs.render import DEFAULT_MAX_SIZE, preview_png, preview_scale
from spinexr.node.settings import Settings
from spinexr.pipeline.atomic import write_atomically
from spinexr.pipeline.errors import PipelineError
from spinexr.pipeline.results import Box, StudyResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Plan:
    """What a preview shows: the image, and its GSPS or result boxes (or neither)."""

    source: Path
    gsps: Path | None
    boxes: tuple[Box, ...]
    key: str


def preview_dir(settings: Settings) -> Path:
    """Return the folder of cached previews.

    Parameters
    ----------
    settings : Settings
        ``storage.data_dir``.

    Returns
    -------
    Path
        ``<data_dir>/previews``.
    """
    return settings.storage.data_dir / "previews"


def _plan(
    settings: Settings, sessions: sessionmaker[Session], study_uid: str, sop_uid: str
) -> _Plan:
    with sessions() as session:
        study_id = session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
        if study_id is None:
            raise NotFoundError(f"no study {study_uid}")
        instance = session.scalar(
            select(Instance)
            .where(Instance.study_id == study_id, Instance.sop_instance_uid == sop_uid)
            .order_by(Instance.version.desc())
            .limit(1)
        )
        if instance is None:
            raise NotFoundError(f"no instance {sop_uid} in study {study_uid}")
        source = settings.storage.spool_dir / instance.path
        base = f"{sop_uid}|v{instance.version}"
        gsps = session.scalar(
            select(OutputObject)
            .join(Job, Job.id == OutputObject.job_id)
            .where(
                Job.study_id == study_id,
                OutputObject.kind == OutputKind.GSPS,
                OutputObject.source_sop_instance_uid == sop_uid,
            )
            .order_by(Job.id.desc())
            .limit(1)
        )
        if gsps is not None:
            return _Plan(
                source,
                settings.storage.output_dir / gsps.path,
                (),
                f"{base}|gsps|{gsps.sop_instance_uid}",
            )
        result = session.scalar(
            select(Result)
            .join(Job, Job.id == Result.job_id)
            .where(Job.study_id == study_id)
            .order_by(Job.id.desc())
            .limit(1)
        )
        if result is None:
            return _Plan(source, None, (), f"{base}|plain")
        try:
            parsed = StudyResult.model_validate(result.payload)
        except ValidationError:
            return _Plan(source, None, (), f"{base}|plain")
        boxes: tuple[Box, ...] = ()
        for image in parsed.images:
            if image.sop_instance_uid == sop_uid:
                boxes = tuple(image.displayed_boxes)
        return _Plan(source, None, boxes, f"{base}|result|{result.id}")


def _draw_boxes(png: bytes, rows: int, columns: int, boxes: tuple[Box, ...]) -> bytes:
    canvas = Image.open(io.BytesIO(png)).convert("RGB")
    scale = preview_scale(rows, columns, DEFAULT_MAX_SIZE)
    width = max(1, round(max(canvas.size) / 512))
    draw = ImageDraw.Draw(canvas)
    size = max(10, round(0.025 * max(canvas.size)))
    font = ImageFont.load_default(size=size)
    for box in boxes:
        colour = CLASS_COLOURS[box.label]
        x0, y0 = int(box.xmin * scale), int(box.ymin * scale)
        x1, y1 = int(box.xmax * scale), int(box.ymax * scale)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        draw.text(
            (x0, max(0, y0 - size - 2)),
            f"{box.label.display_name} {box.score:.2f}",
            fill=colour,
            font=font,
            stroke_width=1,
            stroke_fill=(0, 0, 0),
        )
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def _render(plan: _Plan) -> bytes:
    try:
        source = pydicom.dcmread(plan.source)
    except FileNotFoundError as exc:
        raise NotFoundError("the image is no longer in the spool") from exc
    except (OSError, InvalidDicomError) as exc:
        raise UnprocessableError(f"the stored image cannot be read ({type(exc).__name__})") from exc
    gsps = None
    if plan.gsps is not None:
        try:
            gsps = pydicom.dcmread(plan.gsps)
        except (OSError, InvalidDicomError):
            logger.warning("GSPS %s unreadable: preview without it", plan.gsps.name)
    try:
        png = preview_png(source, gsps)
    except (PipelineError, ValueError) as exc:
        raise UnprocessableError(f"the image cannot be rendered: {exc}") from exc
    if gsps is None and plan.boxes:
        png = _draw_boxes(png, int(source.Rows), int(source.Columns), plan.boxes)
    return png


def preview_file(
    settings: Settings, sessions: sessionmaker[Session], study_uid: str, sop_uid: str
) -> Path:
    """Return the cached preview PNG of an image, rendering it when needed.

    Parameters
    ----------
    settings : Settings
        Folders.
    sessions : sessionmaker
        Database sessions.
    study_uid, sop_uid : str
        The study and the image.

    Returns
    -------
    Path
        The PNG file.

    Raises
    ------
    NotFoundError
        If the study, the image or its file does not exist.
    UnprocessableError
        If the image cannot be decoded or rendered.
    """
    plan = _plan(settings, sessions, study_uid, sop_uid)
    name = hashlib.sha256(plan.key.encode("utf-8")).hexdigest()[:40] + ".png"
    folder = preview_dir(settings)
    path = folder / name
    max_bytes = settings.http.preview_cache_mb * 2**20
    max_age = settings.http.preview_cache_max_age_days * 86400
    if path.is_file():
        previewcache.touch(path)
        previewcache.maybe_prune(folder, max_bytes=max_bytes, max_age_seconds=max_age, keep=path)
        return path
    png = _render(plan)
    write_atomically(path, png, durable=False)  # a cache: rebuilt when lost
    logger.info("preview of %s rendered (%d bytes)", sop_uid, len(png))
    previewcache.prune(folder, max_bytes=max_bytes, max_age_seconds=max_age, keep=path)
    return path


def preview_bytes(
    settings: Settings, sessions: sessionmaker[Session], study_uid: str, sop_uid: str
) -> bytes:
    """Return an image's preview PNG (:func:`preview_file`), read while it is there.

    The cache may drop a file between :func:`preview_file` and the read (another request's
    prune): it is then rendered again.

    Parameters
    ----------
    settings : Settings
        Folders and cache bounds.
    sessions : sessionmaker
        Database sessions.
    study_uid, sop_uid : str
        The study and the image.

    Returns
    -------
    bytes
        The PNG.

    Raises
    ------
    NotFoundError
        If the study, the image or its file does not exist.
    UnprocessableError
        If the image cannot be decoded or rendered.
    """
    for _ in range(2):
        path = preview_file(settings, sessions, study_uid, sop_uid)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            continue
    return _render(_plan(settings, sessions, study_uid, sop_uid))
