"""Effective settings as TOML text (``tomli-w``), for ``spinexr-node config check``."""

from __future__ import annotations

from typing import Any

import tomli_w


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def dumps(data: dict[str, Any]) -> str:
    """Render nested dicts as TOML.

    TOML has no null: keys whose value is ``None`` are left out ("not set"); values TOML
    has no type for are written as their ``str``.

    Parameters
    ----------
    data : dict
        Top-level keys map to scalars, tables (dicts) or arrays of tables (lists of dicts).

    Returns
    -------
    str
        TOML text.
    """
    return tomli_w.dumps(_plain(data))
