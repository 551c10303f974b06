"""Messages waiting per queue, read from the broker."""

from __future__ import annotations

import logging

from spinexr.node.settings import Settings
from spinexr.node.tasking.app import EXPORT_QUEUE, INFERENCE_QUEUE, configure

logger = logging.getLogger(__name__)


def queue_depths(settings: Settings) -> dict[str, int | None]:
    """Return the number of waiting messages per queue (None when the broker can't say).

    Parameters
    ----------
    settings : Settings
        Broker settings.

    Returns
    -------
    dict
        Queue name → depth.
    """
    app = configure(settings)
    depths: dict[str, int | None] = {}
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in (INFERENCE_QUEUE, EXPORT_QUEUE):
                try:
                    depths[name] = int(channel.queue_declare(name, passive=True).message_count)
                except Exception:  # a queue nobody declared yet
                    depths[name] = 0
    except Exception as exc:  # broker down: say so, don't fail the status command
        logger.warning("broker not reachable: %s", type(exc).__name__)
        return {INFERENCE_QUEUE: None, EXPORT_QUEUE: None}
    return depths
