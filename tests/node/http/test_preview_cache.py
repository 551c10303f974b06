"""The admin pages' preview cache stays within its size and age bounds."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spinexr.node.http.admin import previewcache
from spinexr.node.http.admin.preview import preview_dir
from spinexr.node.settings import load_settings

DAY = 86400.0


def _file(folder: Path, name: str, size: int, age: float, now: float) -> Path:
    path = folder / name
    path.write_bytes(b"x" * size)
    os.utime(path, (now - age, now - age))
    return path


def test_prune_removes_old_previews_then_least_recently_used_over_size(tmp_path: Path) -> None:
    now = time.time()
    old = _file(tmp_path, "old.png", 10, 8 * DAY, now)
    a = _file(tmp_path, "a.png", 400, 3 * DAY, now)  # least recently used of the fresh ones
    b = _file(tmp_path, "b.png", 400, 2 * DAY, now)
    c = _file(tmp_path, "c.png", 400, 1 * DAY, now)
    stale_part = _file(tmp_path, ".x.png.0123abcd.part", 50, 2 * 3600, now)
    fresh_part = _file(tmp_path, ".y.png.4567cdef.part", 50, 10, now)  # a render under way

    report = previewcache.prune(tmp_path, max_bytes=900, max_age_seconds=7 * DAY, now=now)

    assert not old.exists() and not a.exists() and b.exists() and c.exists()
    assert not stale_part.exists() and fresh_part.exists()
    assert report == previewcache.PruneReport(3, 460, 2, 800)


def test_prune_keeps_the_preview_being_sent_even_when_old_and_over_size(tmp_path: Path) -> None:
    now = time.time()
    keep = _file(tmp_path, "keep.png", 1000, 30 * DAY, now)
    other = _file(tmp_path, "other.png", 10, 1, now)
    previewcache.prune(tmp_path, max_bytes=100, max_age_seconds=DAY, keep=keep, now=now)
    assert keep.exists() and not other.exists()


def test_prune_of_a_missing_folder_does_nothing(tmp_path: Path) -> None:
    report = previewcache.prune(tmp_path / "none", max_bytes=1, max_age_seconds=1)
    assert report == previewcache.PruneReport(0, 0, 0, 0)


def test_settings_have_sane_defaults_and_refuse_nonsense(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    http = load_settings(None).http
    assert http.preview_cache_mb == 256 and http.preview_cache_max_age_days == 7
    from spinexr.node.errors import ConfigError

    with pytest.raises(ConfigError, match="preview_cache_mb"):
        load_settings(None, http={"preview_cache_mb": 0})


def test_admin_previews_stay_within_the_bounds(make_world: Callable[..., Any]) -> None:
    """Rendering a preview prunes what is too old or over size; a hit marks its use."""
    world = make_world()  # then the same settings with a 1 MiB cache
    world.stack.settings.http.preview_cache_mb = 1
    world.login()
    folder = preview_dir(world.stack.settings)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    expired = _file(folder, "expired.png", 1000, 8 * DAY, now)
    filler = [_file(folder, f"f{i}.png", 300_000, 3 * DAY - i, now) for i in range(4)]

    first, second = (str(ds.SOPInstanceUID) for ds in world.sources)
    url = f"/admin/studies/{world.analysed_uid}/instances/{{}}/preview.png"
    assert world.client.get(url.format(first)).status_code == 200

    left = {p.name: p.stat().st_size for p in folder.glob("*.png")}
    assert "expired.png" not in left and not expired.exists()
    assert sum(left.values()) <= 2**20
    # Least recently used first: f0 is the oldest filler, the new preview stays.
    assert not filler[0].exists() and filler[3].exists()
    rendered = [p for p in folder.glob("*.png") if not p.name.startswith("f")]
    assert len(rendered) == 1

    # A hit marks the preview used: it outlives fillers older than its last use.
    os.utime(rendered[0], (now - 5 * DAY, now - 5 * DAY))
    assert world.client.get(url.format(first)).status_code == 200
    assert rendered[0].stat().st_mtime > now - 60
    assert world.client.get(url.format(second)).status_code == 200
    assert rendered[0].exists()
    assert sum(p.stat().st_size for p in folder.glob("*.png")) <= 2**20
