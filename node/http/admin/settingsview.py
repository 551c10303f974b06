"""The effective settings with every secret masked (what ``config check`` prints)."""

from __future__ import annotations

from typing import Any

from spinexr.node.settings import Settings, masked_dict


def effective_settings(settings: Settings) -> dict[str, Any]:
    """Return the settings as plain data, secrets masked, with the derived values.

    Parameters
    ----------
    settings : Settings
        Loaded settings.

    Returns
    -------
    dict
        `spinexr.node.settings.masked_dict` plus ``_derived``: the database URL (masked
        when it is a configured one, which may hold a password), the queue mode and the
        spool folder.
    """
    data = masked_dict(settings)
    data["_derived"] = {
        "database_url": "********"
        if settings.database.url.get_secret_value()
        else settings.database_url,
        "queue": "embedded (SQLite broker, in-process worker)"
        if settings.embedded_queue
        else "external broker",
        "spool_dir": str(settings.storage.spool_dir),
    }
    return data
