"""Secrets kept out of what the node shows: masked settings and values to redact.

`effective_settings` is the view of ``spinexr-node config check`` and ``/api/v1/settings``;
`secret_values` and `redact` keep the same secrets out of ``doctor`` and ``/readyz`` details.
Both find the secrets the same way: every `SecretStr` field of the settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

from spinexr.node.settings import Settings

MASK = "********"


def _plain(value: Any, secrets: list[str]) -> Any:
    """Return ``value`` as plain data, each set secret masked and appended to ``secrets``."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if secret:
            secrets.append(secret)
        return MASK if secret else ""
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k), secrets) for k in type(value).model_fields}
    if isinstance(value, list):
        return [_plain(v, secrets) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def masked_dict(settings: Settings) -> dict[str, Any]:
    """Return the settings as plain data with every secret masked.

    Parameters
    ----------
    settings : Settings
        Loaded settings.

    Returns
    -------
    dict
        JSON/TOML-serialisable settings; secrets read ``"********"`` when set, ``""`` if not.
    """
    out = _plain(settings, [])
    assert isinstance(out, dict)
    return out


def effective_settings(settings: Settings) -> dict[str, Any]:
    """Return the settings as plain data, secrets masked, with the derived values.

    Parameters
    ----------
    settings : Settings
        Loaded settings.

    Returns
    -------
    dict
        `masked_dict` plus ``_derived``: the database URL (masked when it is a configured
        one, which may hold a password), the queue mode and the spool folder.
    """
    data = masked_dict(settings)
    data["_derived"] = {
        "database_url": MASK if settings.database.url.get_secret_value() else settings.database_url,
        "queue": "embedded (SQLite broker, in-process worker)"
        if settings.embedded_queue
        else "external broker",
        "spool_dir": str(settings.storage.spool_dir),
    }
    return data


def secret_values(settings: Settings) -> list[str]:
    """Return every secret value in ``settings`` (to keep them out of details and logs).

    Parameters
    ----------
    settings : Settings
        Loaded settings.

    Returns
    -------
    list of str
        The value of every set `SecretStr` field (token, passwords, database and broker
        URLs) and the password inside each URL among them.
    """
    found: list[str] = []
    _plain(settings, found)
    return found + [p for p in _url_passwords(found) if p]


def _url_passwords(values: Iterable[str]) -> Iterator[str | None]:
    for value in values:
        if "://" in value:
            try:
                yield urlsplit(value).password
            except ValueError:  # not a URL after all
                continue


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value that occurs in ``text`` with ``********``.

    Parameters
    ----------
    text : str
        A detail line (may quote a URL or an error message).
    secrets : iterable of str
        Values that must never be shown (passwords, tokens); empty ones are ignored.

    Returns
    -------
    str
        The text without the secrets.
    """
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
