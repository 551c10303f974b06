"""Celery tasks: ids in, state from the database.

They are idempotent: running one twice, or for a job already done, changes nothing.
"""

from __future__ import annotations

import logging

from spinexr.node.db.states import JobState
from spinexr.node.jobs.runner import WAIT_SECONDS
from spinexr.node.tasking.app import EXPORT_QUEUE, INFERENCE_QUEUE, app
from spinexr.node.tasking.runtime import get_runtime

logger = logging.getLogger(__name__)


@app.task(name="spinexr.analyze_study", acks_late=True, reject_on_worker_lost=True)
def analyze_study(job_id: int) -> None:
    """Analyse the most urgent queued job (``job_id`` on equal priority) and build it.

    Inference and building run together on the inference worker: the building needs the
    decoded sources and the result already in memory and takes a fraction of a second,
    so a second hop would only decode everything again.
    """
    rt = get_runtime()
    claimed = rt.runner.claim(preferred=job_id)
    if claimed is None:
        if rt.runner.is_waiting(job_id):  # its models are being prepared: look again later
            analyze_study.apply_async(args=[job_id], queue=INFERENCE_QUEUE, countdown=WAIT_SECONDS)
        else:
            logger.info("analyze_study(%s): nothing queued", job_id)
        return
    outcome = rt.runner.run(claimed)
    if outcome.state is JobState.BUILT:
        export_results.apply_async(args=[claimed], queue=EXPORT_QUEUE)
    elif outcome.state is JobState.QUEUED:
        analyze_study.apply_async(args=[claimed], queue=INFERENCE_QUEUE, countdown=outcome.retry_in)
    if claimed != job_id:
        # The message's own job is still queued: keep one message per queued job.
        countdown = WAIT_SECONDS if rt.runner.is_waiting(job_id) else None
        analyze_study.apply_async(args=[job_id], queue=INFERENCE_QUEUE, countdown=countdown)


@app.task(name="spinexr.export_results", acks_late=True, reject_on_worker_lost=True)
def export_results(job_id: int) -> None:
    """Run one export round; schedule the next one after the backoff if needed."""
    rt = get_runtime()
    from spinexr.node.db.models import Job

    with rt.sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.state not in (JobState.BUILT, JobState.FAILED):
            logger.info("export_results(%s): nothing to do", job_id)
            return
    result = rt.exporter.export(job_id)
    if result.retry_in is not None:
        export_results.apply_async(args=[job_id], queue=EXPORT_QUEUE, countdown=result.retry_in)
