"""A small TOML writer for printing effective settings (tables, arrays of tables, scalars)."""

from __future__ import annotations

import json
from typing import Any


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def dumps(data: dict[str, Any]) -> str:
    """Render nested dicts as TOML.

    TOML has no null: keys whose value is ``None`` are left out ("not set").

    Parameters
    ----------
    data : dict
        Top-level keys map to scalars, tables (dicts) or arrays of tables (lists of dicts).

    Returns
    -------
    str
        TOML text.
    """
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []

    def emit_table(prefix: str, table: dict[str, Any], header: str) -> None:
        lines.append(header)
        nested = []
        for key, value in table.items():
            if value is None:
                continue
            if isinstance(value, dict):
                nested.append((f"{prefix}.{key}", value))
            else:
                lines.append(f"{key} = {_scalar(value)}")
        lines.append("")
        for name, sub in nested:
            emit_table(name, sub, f"[{name}]")

    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{key} = {_scalar(value)}")
    if lines:
        lines.append("")
    for name, table in tables:
        emit_table(name, table, f"[{name}]")
    for name, items in arrays:
        for item in items:
            emit_table(name, item, f"[[{name}]]")
    return "\n".join(lines)
